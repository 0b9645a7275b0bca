"""`/v1/kb` over a real app and knowledge base: the bases a key may read, a document's passages,
and the hit test with the relevance gate's verdict."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import server
from agent.policy.tenants import TenantStore
from agent.settings import get_settings
from tests.conftest import FIXTURES

GUIDE = (
    "# 售后\n\n七天无理由退货，退款三个工作日内原路返回。\n\n## 发票\n\n电子发票在签收后开具。\n"
)


@pytest.fixture
def keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv("QQRAG_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("QQRAG_DEFAULT_DOCS", str(FIXTURES / "kb"))
    monkeypatch.setenv("QQRAG_OLLAMA_URL", "http://127.0.0.1:9")
    get_settings.cache_clear()
    store = TenantStore(tmp_path / "tenants.sqlite")
    try:
        store.create_tenant("ops")
        store.create_tenant("acme", ["faq"])
        return {"admin": store.issue_key("ops", "admin"), "client": store.issue_key("acme")}
    finally:
        store.close()


@pytest.fixture
def client(keys: dict[str, str]) -> Iterator[TestClient]:
    with TestClient(server.create_app()) as test_client:
        admin = {"Authorization": f"Bearer {keys['admin']}"}
        added = test_client.post(
            "/v1/admin/kb/faq/documents", files={"file": ("售后.md", GUIDE.encode())}, headers=admin
        )
        assert added.status_code == 201, added.text
        yield test_client


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_an_admin_reads_every_base_and_a_tenant_only_its_own(
    client: TestClient, keys: dict[str, str]
):
    admin, tenant = auth(keys["admin"]), auth(keys["client"])
    assert client.get("/v1/kb", headers=admin).json() == {
        "knowledge_bases": ["default", "faq"],
        "writable": True,
    }
    assert client.get("/v1/kb", headers=tenant).json() == {
        "knowledge_bases": ["faq"],
        "writable": False,
    }
    listed = client.get("/v1/kb/faq/documents", headers=tenant).json()
    assert [(d["source"], d["passages"]) for d in listed["documents"]] == [("售后.md", 2)]

    other = client.get("/v1/kb/default/documents", headers=tenant)
    assert other.status_code == 404
    assert other.json()["error"] == {
        "code": "kb_not_found",
        "message": "租户 acme 没有知识库 default",
    }
    assert (
        client.post("/v1/kb/default/search", json={"question": "保修"}, headers=tenant).status_code
        == 404
    )
    assert client.get("/v1/kb/default/documents", headers=admin).status_code == 200
    assert client.get("/v1/kb").status_code == 401


def test_a_document_shows_its_passages_in_order(client: TestClient, keys: dict[str, str]):
    tenant = auth(keys["client"])
    document_id = client.get("/v1/kb/faq/documents", headers=tenant).json()["documents"][0]["id"]
    shown = client.get(f"/v1/kb/faq/documents/{document_id}", headers=tenant).json()
    assert shown["document"]["source"] == "售后.md"
    assert [p["text"] for p in shown["passages"]] == [
        "七天无理由退货，退款三个工作日内原路返回。",
        "电子发票在签收后开具。",
    ]
    missing = client.get("/v1/kb/faq/documents/0123456789ab", headers=tenant)
    assert missing.status_code == 404
    assert missing.json()["error"]["message"] == "知识库 faq 里没有文档 0123456789ab"


def test_the_hit_test_ranks_as_a_turn_and_says_whether_the_gate_lets_anything_in(
    client: TestClient, keys: dict[str, str]
):
    tenant = auth(keys["client"])
    found = client.post("/v1/kb/faq/search", json={"question": "无理由退货几天？"}, headers=tenant)
    assert found.status_code == 200, found.text
    body = found.json()
    assert body["answered"] is True
    assert (body["reranker"], body["relevance_threshold"]) == ("lexical", 0.5)
    best = body["ranked"][0]
    assert best["text"].startswith("七天无理由退货") and best["evidence"] is True
    assert best["score"] >= body["floor"] >= body["relevance_threshold"]
    assert all(not p["evidence"] for p in body["ranked"] if p["score"] < body["floor"])

    missed = client.post(
        "/v1/kb/faq/search", json={"question": "火星基地几点开门？"}, headers=tenant
    )
    assert missed.json()["answered"] is False
    assert not any(p["evidence"] for p in missed.json()["ranked"])


def test_a_hit_test_without_a_question_is_refused_in_chinese(
    client: TestClient, keys: dict[str, str]
):
    admin = auth(keys["admin"])
    empty = client.post("/v1/kb/faq/search", json={"question": ""}, headers=admin)
    assert empty.status_code == 422
    assert empty.json()["error"]["code"] == "invalid_request"
    assert "question" in empty.json()["error"]["message"]
    long = client.post("/v1/kb/faq/search", json={"question": "问" * 5000}, headers=admin)
    assert long.status_code == 422
    assert "question 超过" in long.json()["error"]["message"]
