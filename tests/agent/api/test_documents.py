"""The admin's document endpoints over a real app, data folder and SQLite: list, upload and
remove documents, each upload and removal in the audit log's admin actions."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import server
from agent.api import documents
from agent.policy.tenants import TenantStore, hash_key
from agent.settings import get_settings
from tests.conftest import FIXTURES
from tests.tools.test_ingest import corrupt_pdf
from tools.kb import EmbeddedKB

GUIDE = "# 售后\n\n七天无理由退货，退款三个工作日内原路返回。\n"


@pytest.fixture
def data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("QQRAG_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("QQRAG_DEFAULT_DOCS", str(FIXTURES / "kb"))
    monkeypatch.setenv("QQRAG_OLLAMA_URL", "http://127.0.0.1:9")
    get_settings.cache_clear()
    (tmp_path / "data").mkdir()
    return tmp_path / "data"


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
def client(data: Path, keys: dict[str, str]) -> Iterator[TestClient]:
    with TestClient(server.create_app()) as test_client:
        yield test_client


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def upload(client: TestClient, key: str, name: str, content: bytes, kb: str = "faq"):
    return client.post(
        f"/v1/admin/kb/{kb}/documents", files={"file": (name, content)}, headers=auth(key)
    )


def test_an_admin_uploads_lists_and_removes_documents_and_each_is_audited(
    client: TestClient, keys: dict[str, str], data: Path
):
    admin = keys["admin"]
    added = upload(client, admin, "售后.md", GUIDE.encode())
    assert added.status_code == 201, added.text
    body = added.json()
    assert (body["result"], body["passages_added"], body["document"]["origin"]) == (
        "added",
        1,
        "upload:售后.md",
    )
    document_id = body["document"]["id"]

    names = client.get("/v1/admin/kb", headers=auth(admin)).json()["knowledge_bases"]
    assert names == ["default", "faq"]
    listed = client.get("/v1/admin/kb/faq/documents", headers=auth(admin)).json()
    assert [(d["id"], d["source"], d["passages"]) for d in listed["documents"]] == [
        (document_id, "售后.md", 1)
    ]

    replaced = upload(client, admin, "售后.md", GUIDE.replace("七天", "十五天").encode())
    assert replaced.status_code == 200
    assert (replaced.json()["result"], replaced.json()["passages_removed"]) == ("replaced", 1)
    assert replaced.json()["document"]["id"] == document_id
    same = upload(client, admin, "售后.md", GUIDE.replace("七天", "十五天").encode())
    assert same.json()["result"] == "unchanged"
    with EmbeddedKB(data / "kb.sqlite", "faq") as kb:
        assert [p["text"] for p in kb.search_sync("无理由退货", 5)] == [
            "十五天无理由退货，退款三个工作日内原路返回。"
        ]

    removed = client.delete(f"/v1/admin/kb/faq/documents/{document_id}", headers=auth(admin))
    assert removed.status_code == 200
    assert (removed.json()["removed"]["source"], removed.json()["passages_removed"]) == (
        "售后.md",
        1,
    )
    assert client.get("/v1/admin/kb/faq/documents", headers=auth(admin)).json()["documents"] == []
    again = client.delete(f"/v1/admin/kb/faq/documents/{document_id}", headers=auth(admin))
    assert again.status_code == 404 and again.json()["error"]["code"] == "document_not_found"

    actions = client.get("/v1/admin/actions", headers=auth(admin)).json()["actions"]
    admin_id = hash_key(admin)[:12]
    assert [
        (a["action"], a["kb"], a["target"], a["actor"], a["actor_tenant"]) for a in actions
    ] == [
        ("document.remove", "faq", "售后.md", admin_id, "ops"),
        ("document.upload", "faq", "售后.md", admin_id, "ops"),
        ("document.upload", "faq", "售后.md", admin_id, "ops"),
    ]
    assert actions[0]["detail"]["passages"] == 1 and actions[0]["via"] == "http"
    assert actions[1]["detail"]["result"] == "replaced"


def test_only_an_admin_key_reaches_the_document_endpoints(client: TestClient, keys: dict[str, str]):
    client_key = keys["client"]
    for response in (
        client.get("/v1/admin/kb", headers=auth(client_key)),
        client.get("/v1/admin/kb/faq/documents", headers=auth(client_key)),
        upload(client, client_key, "售后.md", GUIDE.encode()),
        client.delete("/v1/admin/kb/default/documents/0123456789ab", headers=auth(client_key)),
        client.get("/v1/admin/actions", headers=auth(client_key)),
    ):
        assert response.status_code == 403
        assert response.json()["error"] == {"code": "forbidden", "message": "需要管理员密钥"}
    assert client.get("/v1/admin/kb/faq/documents").status_code == 401


def test_uploads_that_cannot_be_stored_say_why(
    data: Path, keys: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    local = tmp_path / "local" / "售后.md"
    local.parent.mkdir()
    local.write_text(GUIDE, encoding="utf-8")
    with EmbeddedKB(data / "kb.sqlite", "faq") as kb:
        kb.add_path(local)
    admin = keys["admin"]
    with TestClient(server.create_app()) as client:
        broken = upload(client, admin, "手册.pdf", corrupt_pdf())
        assert broken.status_code == 422
        assert broken.json()["error"]["code"] == "unreadable_document"
        assert broken.json()["error"]["message"].startswith(
            "手册.pdf：PDF 文件已损坏或不是 PDF，无法读取"
        )
        image = upload(client, admin, "logo.png", b"\x89PNG")
        assert image.status_code == 422 and "不支持的文件格式：.png" in image.text

        # The name belongs to a document imported from a local file: not replaced.
        clash = upload(client, admin, "售后.md", GUIDE.replace("七天", "三十天").encode())
        assert clash.status_code == 409
        error = clash.json()["error"]
        assert error["code"] == "document_exists" and str(local.resolve()) in error["message"]

        monkeypatch.setattr(documents, "MAX_UPLOAD_MB", 0)
        big = upload(client, admin, "大.md", GUIDE.encode())
        assert big.status_code == 413 and big.json()["error"]["code"] == "too_large"
    with EmbeddedKB(data / "kb.sqlite", "faq") as kb:
        assert [(s.source, s.origin) for s in kb.sources()] == [("售后.md", str(local.resolve()))]
