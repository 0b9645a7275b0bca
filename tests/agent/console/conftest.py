"""The console in a real browser: Debian's chromium driven by Playwright.

Without chromium the tests skip, except where `.ci/run` sets QQRAG_REQUIRE_BROWSER=1: in CI a
missing browser fails them."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.agent.console.site import CHROMIUM, Site, running_site

BROWSER_REQUIRED = os.environ.get("QQRAG_REQUIRE_BROWSER") == "1"


# Module-scoped: Playwright's sync API keeps an event loop running in the main thread while it
# is open, and the async tests after this folder need that thread's loop free.
@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        problem = f"no chromium at {CHROMIUM} (apt-get install chromium)"
        (pytest.fail if BROWSER_REQUIRED else pytest.skip)(problem)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM))
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """One service for a module's tests: each test signs in afresh in a context of its own."""
    with running_site(tmp_path_factory.mktemp("console")) as running:
        yield running


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(locale="zh-CN")
    yield context.new_page()
    context.close()
