"""Take the console's screenshots for the docs (docs/images/console-*.png) against a fresh
service with a few turns asked: `python tests/agent/console/screenshots.py`."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

# Run as a script: the repository root, where `tests` and `evals` are importable from.
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from tests.agent.console.site import CHROMIUM, PHONE, ROOT, running_site, sign_in

IMAGES = ROOT / "docs" / "images"
QUESTIONS = ("星尘打印机保修多久？", "月光扫地机器人续航多久？", "星尘打印机支持哪些耗材？")


def main() -> None:
    IMAGES.mkdir(exist_ok=True)
    with (
        tempfile.TemporaryDirectory() as folder,
        running_site(Path(folder)) as site,
        sync_playwright() as playwright,
    ):
        for text in QUESTIONS:
            site.ask(site.tenant_key, text)
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM))
        page = browser.new_page(viewport={"width": 1200, "height": 900}, locale="zh-CN")
        sign_in(page, site, site.admin_key)
        expect(page.get_by_test_id("chart")).to_have_count(6)
        page.screenshot(path=IMAGES / "console-status.png", full_page=True)

        page.goto(f"{site.url}/console/playground")
        page.get_by_label("租户").fill("acme")
        page.get_by_label("问题").fill(QUESTIONS[0])
        page.keyboard.press("Enter")
        expect(page.locator("#citations li")).to_have_count(1)
        page.screenshot(path=IMAGES / "console-playground.png", full_page=True)

        page.goto(f"{site.url}/console/kb")
        page.get_by_role("button", name="查看段落").first.click()
        expect(page.get_by_test_id("passage")).not_to_have_count(0)
        page.get_by_label("问题").fill(QUESTIONS[0])
        page.keyboard.press("Enter")
        expect(page.get_by_test_id("gate")).to_be_visible()
        page.screenshot(path=IMAGES / "console-kb.png", full_page=True)

        page.goto(f"{site.url}/console/governance")
        page.get_by_test_id("tenant-acme").get_by_label("备注").fill("官方机器人")
        page.get_by_role("button", name="为 acme 签发密钥").click()
        expect(page.get_by_test_id("secret")).to_be_visible()
        expect(page.get_by_test_id("limits")).to_be_visible()
        page.screenshot(path=IMAGES / "console-governance.png", full_page=True)

        page.goto(f"{site.url}/console/conversations")
        page.get_by_test_id("turn").first.get_by_role("button", name="打开").click()
        expect(page.get_by_test_id("conversation-turn")).not_to_have_count(0)
        page.screenshot(path=IMAGES / "console-conversations.png", full_page=True)

        page.set_viewport_size(PHONE)
        page.goto(f"{site.url}/console/")
        expect(page.get_by_test_id("chart")).to_have_count(6)
        page.screenshot(path=IMAGES / "console-phone.png")
        browser.close()
    print(f"screenshots in {IMAGES}")


if __name__ == "__main__":
    main()
