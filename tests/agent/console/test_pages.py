"""The console's pages and fragments over a real app, without a browser: every asset served
by the service itself, and fragments that answer as the API answers the same key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import server
from agent.console.charts import bar_chart
from agent.policy.tenants import TenantStore
from agent.settings import get_settings
from tests.conftest import FIXTURES


@pytest.fixture
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> TestClient:
    monkeypatch.setenv("QQRAG_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("QQRAG_DEFAULT_DOCS", str(FIXTURES / "kb"))
    monkeypatch.setenv("QQRAG_OLLAMA_URL", "http://127.0.0.1:9")
    get_settings.cache_clear()
    return TestClient(server.create_app())


def test_pages_load_only_assets_the_service_serves(client: TestClient):
    with client:
        assert client.get("/console", follow_redirects=False).headers["location"] == "/console/"
        for page in (
            "/console/",
            "/console/signin",
            "/console/playground",
            "/console/kb",
            "/console/governance",
            "/console/conversations",
        ):
            html = client.get(page).text
            assets = re.findall(r'(?:src|href)="([^"]+)"', html)
            assert all(asset.startswith("/") for asset in assets), assets
            for asset in assets:
                assert client.get(asset).status_code == 200, asset


def test_the_status_fragment_refuses_as_the_api_does_and_shows_a_fix_when_down(
    client: TestClient, tmp_path: Path
):
    store = TenantStore(tmp_path / "tenants.sqlite")
    store.create_tenant("ops")
    key = store.issue_key("ops", "admin")
    store.close()
    with client:
        refused = client.get("/console/fragments/status")
        shown = client.get(
            "/console/fragments/status?hours=1", headers={"Authorization": f"Bearer {key}"}
        )
    assert refused.status_code == 401
    assert "无效的 API Key" in refused.text
    assert shown.status_code == 200
    # No Ollama at port 9: degraded, with what to do about it.
    assert 'data-testid="overall">降级<' in shown.text
    assert "启动 Ollama（ollama serve）" in shown.text
    assert shown.text.count('data-testid="chart"') == 6


def test_knowledge_fragments_answer_as_the_api_does_for_a_tenant(
    client: TestClient, tmp_path: Path
):
    store = TenantStore(tmp_path / "tenants.sqlite")
    store.create_tenant("acme", ["faq"])
    tenant = {"Authorization": f"Bearer {store.issue_key('acme')}"}
    store.close()
    with client:
        bases = client.get("/console/fragments/kb/bases", headers=tenant)
        other = client.get("/console/fragments/kb/documents?kb=default", headers=tenant)
        removal = client.delete(
            "/console/fragments/kb/documents?kb=faq&document=0123456789ab", headers=tenant
        )
        empty = client.get("/console/fragments/kb/documents?kb=faq", headers=tenant)
    # Reading only: the upload form is left out for a key that may not upload.
    assert bases.status_code == 200 and '<option value="faq">' in bases.text
    assert "upload-form" not in bases.text
    assert (other.status_code, "租户 acme 没有知识库 default" in other.text) == (404, True)
    assert (removal.status_code, "需要管理员密钥" in removal.text) == (403, True)
    assert "知识库 faq 里还没有文档" in empty.text


def test_bars_scale_to_the_tallest_and_quiet_buckets_are_flat():
    chart = bar_chart("每分钟提问", "2 次", [0, 1, 2], ["10:00", "10:05", "10:10"], str)
    assert [bar.height for bar in chart.bars] == [0.0, 30.0, 60.0]
    assert [bar.tip for bar in chart.bars][2] == "10:10：2"
    assert (chart.peak, chart.first, chart.last) == ("2", "10:00", "10:10")
