"""The governance endpoints over a real app: tenants and keys issued and revoked over HTTP (each
in the admin actions), the limits in effect, sensitive-word hits by category, and the gray
release's rules."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import server
from agent.policy.tenants import TenantStore, hash_key
from agent.settings import get_settings
from tests.conftest import FIXTURES


@pytest.fixture
def data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("QQRAG_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("QQRAG_DEFAULT_DOCS", str(FIXTURES / "kb"))
    monkeypatch.setenv("QQRAG_OLLAMA_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("QQRAG_QUOTA_USER_RPM", "7")
    get_settings.cache_clear()
    (tmp_path / "sensitive_words").mkdir()
    (tmp_path / "sensitive_words" / "违规.txt").write_text("违禁品\n", encoding="utf-8")
    (tmp_path / "sensitive_words" / "广告.txt").write_text("加微信\n", encoding="utf-8")
    (tmp_path / "profiles.yaml").write_text(
        "profiles:\n  canary:\n    top_k: 4\nrules:\n  - {profile: canary, tenant: acme, percent: 10}\n",
        encoding="utf-8",
    )
    return tmp_path


@pytest.fixture
def keys(data: Path) -> dict[str, str]:
    store = TenantStore(data / "tenants.sqlite")
    try:
        store.create_tenant("ops")
        store.create_tenant("acme", ["faq"])
        return {"admin": store.issue_key("ops", "admin"), "client": store.issue_key("acme")}
    finally:
        store.close()


@pytest.fixture
def client(keys: dict[str, str]) -> Iterator[TestClient]:
    with TestClient(server.create_app()) as test_client:
        yield test_client


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_an_admin_issues_a_key_sees_its_secret_once_and_revokes_it(
    client: TestClient, keys: dict[str, str]
):
    admin = auth(keys["admin"])
    issued = client.post("/v1/admin/tenants/acme/keys", json={"label": "官方机器人"}, headers=admin)
    assert issued.status_code == 201, issued.text
    secret, info = issued.json()["key"], issued.json()["issued"]
    assert (info["tenant"], info["role"], info["label"]) == ("acme", "client", "官方机器人")
    assert info["key_id"] == hash_key(secret)[:12]
    assert client.get("/v1/me", headers=auth(secret)).json()["tenant"] == "acme"

    tenants = client.get("/v1/admin/tenants", headers=admin).json()["tenants"]
    acme = next(t for t in tenants if t["name"] == "acme")
    assert acme["knowledge_bases"] == ["faq"]
    assert info["key_id"] in [key["key_id"] for key in acme["keys"]]
    assert secret not in str(tenants)

    revoked = client.delete(f"/v1/admin/keys/{info['key_id']}", headers=admin)
    assert revoked.status_code == 200
    assert revoked.json()["revoked"]["revoked_at"] is not None
    assert client.get("/v1/me", headers=auth(secret)).status_code == 401
    again = client.delete(f"/v1/admin/keys/{info['key_id']}", headers=admin)
    assert again.status_code == 404 and again.json()["error"]["code"] == "key_not_found"

    actions = client.get("/v1/admin/actions", headers=admin).json()["actions"]
    assert [(a["action"], a["target"], a["detail"]["tenant"]) for a in actions] == [
        ("key.revoke", info["key_id"], "acme"),
        ("key.issue", info["key_id"], "acme"),
    ]


def test_bad_key_requests_are_refused_in_chinese(client: TestClient, keys: dict[str, str]):
    admin = auth(keys["admin"])
    nobody = client.post("/v1/admin/tenants/nobody/keys", json={}, headers=admin)
    assert (nobody.status_code, nobody.json()["error"]["message"]) == (404, "没有租户 nobody")
    role = client.post("/v1/admin/tenants/acme/keys", json={"role": "root"}, headers=admin)
    assert role.status_code == 422 and "role" in role.json()["error"]["message"]
    short = client.delete("/v1/admin/keys/abc", headers=admin)
    assert short.status_code == 422
    assert "前 6 位以上" in short.json()["error"]["message"]
    for response in (
        client.get("/v1/admin/tenants", headers=auth(keys["client"])),
        client.post("/v1/admin/tenants/acme/keys", json={}, headers=auth(keys["client"])),
        client.delete("/v1/admin/keys/abcdef", headers=auth(keys["client"])),
        client.get("/v1/admin/limits", headers=auth(keys["client"])),
        client.get("/v1/admin/safety", headers=auth(keys["client"])),
    ):
        assert response.status_code == 403


def test_limits_safety_hits_and_gray_rules_are_what_the_service_enforces(
    client: TestClient, keys: dict[str, str]
):
    admin = auth(keys["admin"])
    limits = client.get("/v1/admin/limits", headers=admin).json()
    assert (limits["user_rpm"], limits["max_inflight_turns"], limits["in_flight"]) == (7, 8, 0)
    assert limits["shared_state"] == "local"

    asked = {"scene": "private", "user_id": "1", "text": "哪里买违禁品？"}
    assert client.post("/v1/chat", json=asked, headers=auth(keys["client"])).status_code == 200
    safety = client.get("/v1/admin/safety", headers=admin).json()
    assert safety["categories"] == [
        {"category": "广告", "question_hits": 0, "answer_hits": 0},
        {"category": "违规", "question_hits": 1, "answer_hits": 0},
    ]

    book = client.get("/v1/admin/profiles", headers=admin).json()
    assert book["rules"] == [
        {"profile": "canary", "tenant": "acme", "group_ids": None, "user_ids": None, "percent": 10}
    ]
