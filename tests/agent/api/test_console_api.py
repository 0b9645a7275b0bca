"""The endpoints the console added to the API, over a real app, audit log and fake Ollama:
who a key is (/v1/me), activity per bucket (/v1/stats), the profiles (/v1/admin/profiles),
asking as a chosen tenant and profile (/v1/chat/stream), and finding turns and feedback
(/v1/audit's filters, GET /v1/feedback)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

import server
from agent.audit import AuditLog
from agent.policy.tenants import TenantStore
from agent.settings import get_settings
from evals.fakes.ollama import FakeOllama
from tests.conftest import FIXTURES

QUESTION = {"scene": "private", "user_id": "u1", "text": "星尘打印机保修多久？"}


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOllama]:
    with FakeOllama() as running:
        yield running


@pytest.fixture
def data(tmp_path: Path, fake: FakeOllama, monkeypatch: pytest.MonkeyPatch) -> Path:
    fake.reset()
    monkeypatch.setenv("QQRAG_OLLAMA_URL", fake.url)
    monkeypatch.setenv("QQRAG_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("QQRAG_DEFAULT_DOCS", str(FIXTURES / "kb"))
    get_settings.cache_clear()
    (tmp_path / "data").mkdir()
    return tmp_path / "data"


@pytest.fixture
def keys(data: Path) -> dict[str, str]:
    store = TenantStore(data / "tenants.sqlite")
    try:
        store.create_tenant("ops")
        store.create_tenant("acme")
        return {"admin": store.issue_key("ops", "admin"), "acme": store.issue_key("acme")}
    finally:
        store.close()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def events(text: str) -> list[tuple[str, Any]]:
    pairs = []
    for block in text.strip().split("\n\n"):
        kind, data = block.split("\n", 1)
        pairs.append((kind.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return pairs


def test_me_names_the_keys_tenant_and_role_and_says_when_the_service_is_open(data: Path):
    with TestClient(server.create_app()) as client:
        assert client.get("/v1/me").json() == {
            "tenant": "default",
            "role": "admin",
            "key_id": "open",
            "open": True,
        }
    store = TenantStore(data / "tenants.sqlite")
    store.create_tenant("acme")
    key = store.issue_key("acme")
    store.close()
    with TestClient(server.create_app()) as client:
        me = client.get("/v1/me", headers=bearer(key)).json()
        assert (me["tenant"], me["role"], me["open"]) == ("acme", "client", False)
        assert client.get("/v1/me").status_code == 401


def test_stats_count_each_tenants_turns_and_refusals_and_a_client_sees_only_its_own(
    data: Path, keys: dict[str, str], monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("QQRAG_QUOTA_USER_RPM", "1")
    with TestClient(server.create_app()) as client:
        asked = client.post("/v1/chat", json=QUESTION, headers=bearer(keys["acme"]))
        refused = client.post("/v1/chat", json=QUESTION, headers=bearer(keys["acme"]))
        client.post("/v1/chat", json=QUESTION, headers=bearer(keys["admin"]))
        own = client.get("/v1/stats?hours=1&bucket=1", headers=bearer(keys["acme"])).json()
        # A client's `tenant` is ignored: it reads its own tenant's, as for /v1/audit.
        other = client.get("/v1/stats?tenant=ops", headers=bearer(keys["acme"])).json()
        everyone = client.get("/v1/stats", headers=bearer(keys["admin"])).json()
    assert (asked.status_code, refused.status_code) == (200, 429)
    assert own["tenant"] == "acme" and other["tenant"] == "acme"
    assert (own["hours"], own["bucket_minutes"], len(own["buckets"])) == (1, 1, 61)
    totals = own["totals"]
    assert (totals["turns"], totals["quota"], totals["busy"], totals["failed"]) == (1, 1, 0, 0)
    assert totals["tokens"] > 0 and totals["mean_seconds"] > 0
    assert totals["degraded_share"] == 0.0
    assert sum(b["quota"] for b in own["buckets"]) == 1
    assert everyone["tenant"] is None and everyone["totals"]["turns"] == 2


def test_stats_want_a_key_once_one_is_issued(data: Path, keys: dict[str, str]):
    with TestClient(server.create_app()) as client:
        response = client.get("/v1/stats")
    assert response.status_code == 401


def test_profiles_list_the_gray_release_book_for_admins_only(data: Path, keys: dict[str, str]):
    (data / "profiles.yaml").write_text(
        "profiles:\n  terse:\n    prompt_variant: concise\n    knowledge_bases: [default]\n",
        encoding="utf-8",
    )
    with TestClient(server.create_app()) as client:
        listed = client.get("/v1/admin/profiles", headers=bearer(keys["admin"])).json()
        refused = client.get("/v1/admin/profiles", headers=bearer(keys["acme"]))
    assert listed == {
        "default": "default",
        "profiles": [
            {"name": "default", "overrides": {}, "knowledge_bases": None},
            {
                "name": "terse",
                "overrides": {"prompt_variant": "concise"},
                "knowledge_bases": ["default"],
            },
        ],
        "rules": [],
    }
    assert refused.status_code == 403


def test_an_admin_asks_as_a_tenant_with_a_chosen_profile_and_the_turn_is_that_tenants(
    data: Path, keys: dict[str, str], fake: FakeOllama
):
    (data / "profiles.yaml").write_text(
        "profiles:\n  thinker:\n    thinking: true\n", encoding="utf-8"
    )
    body = QUESTION | {"platform": "console", "tenant": "acme", "profile": "thinker"}
    with TestClient(server.create_app()) as client:
        streamed = client.post(
            "/v1/chat/stream", json=body | {"trace": True}, headers=bearer(keys["admin"])
        )
        unknown_tenant = client.post(
            "/v1/chat/stream", json=body | {"tenant": "nobody"}, headers=bearer(keys["admin"])
        )
        unknown_profile = client.post(
            "/v1/chat/stream", json=body | {"profile": "nope"}, headers=bearer(keys["admin"])
        )
        by_client = client.post("/v1/chat/stream", json=body, headers=bearer(keys["acme"]))
        own_tenant = client.post(
            "/v1/chat/stream", json=QUESTION | {"tenant": "acme"}, headers=bearer(keys["acme"])
        )
    result = dict(events(streamed.text))["result"]
    assert result["thread_id"] == "acme:console:private:u1"
    assert fake.calls("/api/chat")[0].get("think") is True
    *_, row = AuditLog(data / "audit.sqlite").turns()  # the oldest: the first turn
    assert (row["tenant"], row["profile"], row["thread_id"]) == (
        "acme",
        "thinker",
        "acme:console:private:u1",
    )
    assert unknown_tenant.status_code == 404
    assert unknown_tenant.json()["error"]["code"] == "tenant_not_found"
    assert unknown_profile.status_code == 422
    assert "thinker" in unknown_profile.json()["error"]["message"]
    assert by_client.status_code == 403
    # Naming its own tenant is no privilege.
    assert own_tenant.status_code == 200


def test_audit_filters_and_feedback_stay_within_the_keys_tenant(data: Path, keys: dict[str, str]):
    with TestClient(server.create_app()) as client:
        for key, user in ((keys["acme"], "u1"), (keys["admin"], "u2")):
            asked = client.post("/v1/chat", json={**QUESTION, "user_id": user}, headers=bearer(key))
            assert asked.status_code == 200
            rated = {"scene": "private", "user_id": user, "rating": "good", "comment": user}
            assert client.post("/v1/feedback", json=rated, headers=bearer(key)).status_code == 200
        acme = bearer(keys["acme"])
        mine = client.get("/v1/audit", params={"q": "保修"}, headers=acme).json()["turns"]
        others = client.get("/v1/audit", params={"thread_id": "ops:qq:private:u2"}, headers=acme)
        every = client.get(
            "/v1/audit", params={"intent": "knowledge"}, headers=bearer(keys["admin"])
        )
        degraded = client.get("/v1/audit", params={"degraded": "true"}, headers=acme)
        feedback = client.get("/v1/feedback", headers=acme).json()["feedback"]
        all_feedback = client.get("/v1/feedback", headers=bearer(keys["admin"])).json()["feedback"]
        bad = client.get("/v1/audit", params={"intent": "other"}, headers=acme)
    assert [turn["thread_id"] for turn in mine] == ["acme:qq:private:u1"]
    assert others.json()["turns"] == []
    assert len(every.json()["turns"]) == 2
    assert degraded.json()["turns"] == []
    assert [(row["thread_id"], row["comment"]) for row in feedback] == [
        ("acme:qq:private:u1", "u1")
    ]
    assert [row["comment"] for row in all_feedback] == ["u2", "u1"]
    assert bad.status_code == 422 and "intent" in bad.json()["error"]["message"]
