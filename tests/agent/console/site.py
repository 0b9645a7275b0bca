"""A console to drive: `qqrag serve` in a child process over the fake Ollama, with an admin
key (tenant ops) and a tenant key (acme) issued; shared by the browser tests and the script
that takes the docs' screenshots (`python tests/agent/console/screenshots.py`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from playwright.sync_api import Page, expect

from agent.policy.tenants import TenantStore
from evals.fakes.ollama import FakeOllama
from evals.harness import ServiceProcess

ROOT = Path(__file__).resolve().parents[3]
CHROMIUM = Path("/usr/bin/chromium")
"""Debian's chromium: Playwright drives it as it is, no browser is downloaded."""
PHONE = {"width": 375, "height": 740}


@dataclass(frozen=True)
class Site:
    url: str
    admin_key: str
    tenant_key: str

    def ask(self, key: str, text: str) -> None:
        """One turn over the API, as a QQ front end would: something for the charts."""
        body = {"scene": "private", "user_id": "10001", "text": text}
        headers = {"Authorization": f"Bearer {key}"}
        response = httpx.post(f"{self.url}/v1/chat", json=body, headers=headers, timeout=30)
        response.raise_for_status()


@contextmanager
def running_site(folder: Path) -> Iterator[Site]:
    data = folder / "data"
    data.mkdir(parents=True)
    store = TenantStore(data / "tenants.sqlite")
    try:
        store.create_tenant("ops")
        store.create_tenant("acme")
        admin, tenant = store.issue_key("ops", "admin"), store.issue_key("acme")
    finally:
        store.close()
    with FakeOllama() as ollama:
        env = {
            "QQRAG_DATA_DIR": str(data),
            "QQRAG_OLLAMA_URL": ollama.url,
            "QQRAG_DEFAULT_DOCS": str(ROOT / "tests" / "fixtures" / "kb"),
        }
        with ServiceProcess(env, cwd=folder) as service:
            yield Site(service.url, admin, tenant)


def sign_in(page: Page, site: Site, key: str) -> None:
    """Through the sign-in form, with the keyboard: type the key, Enter."""
    page.goto(f"{site.url}/console/")
    expect(page).to_have_url(f"{site.url}/console/signin")
    page.get_by_label("API 密钥").fill(key)
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="服务状态")).to_be_visible()
