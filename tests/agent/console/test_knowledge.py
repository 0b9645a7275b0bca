"""The knowledge base page in headless chromium: an admin uploads a document, reads its
passages, hit-tests a question and removes it; a tenant's key only reads its own bases."""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import Page, expect

from tests.agent.console.site import PHONE, Site, sign_in

TOASTER = (
    "# 量子烤面包机\n\n量子烤面包机整机保修三年，烤盘保修一年。\n\n"
    "## 清洁\n\n量子烤面包机的碎屑盘每周清理一次。\n"
)


def test_an_admin_uploads_a_document_reads_it_hit_tests_it_and_removes_it(
    page: Page, site: Site, tmp_path: Path
):
    document = tmp_path / "量子烤面包机.md"
    document.write_text(TOASTER, encoding="utf-8")
    sign_in(page, site, site.admin_key)
    page.get_by_role("link", name="知识库").click()
    expect(page.get_by_label("知识库")).to_have_value("default")
    expect(page.get_by_test_id("document")).not_to_have_count(0)

    page.get_by_label("选择文件").set_input_files(document)
    page.get_by_role("button", name="上传").click()
    uploaded = page.get_by_test_id("upload")
    expect(uploaded).to_contain_text("量子烤面包机.md已添加（新增 2 段，删去 0 段）")
    expect(uploaded.locator("progress")).to_have_js_property("value", 1)
    row = page.get_by_test_id("document").filter(has_text="量子烤面包机.md")
    expect(row).to_contain_text("upload:量子烤面包机.md")

    row.get_by_role("button", name="查看段落").click()
    expect(page.get_by_test_id("passage")).to_have_count(2)
    expect(page.get_by_test_id("passages")).to_contain_text("碎屑盘每周清理一次")

    page.get_by_label("问题").fill("量子烤面包机保修多久？")
    page.keyboard.press("Enter")
    expect(page.get_by_test_id("gate")).to_contain_text("通过相关性门槛")
    best = page.get_by_test_id("hit").first
    expect(best).to_contain_text("量子烤面包机.md")
    expect(best).to_contain_text("证据")

    page.once("dialog", lambda dialog: dialog.accept())
    row.get_by_role("button", name="删除").click()
    expect(page.get_by_role("status")).to_have_text("已删除 量子烤面包机.md（2 段）。")
    expect(row).to_have_count(0)
    page.get_by_role("button", name="检索").click()
    expect(page.get_by_test_id("hits")).not_to_contain_text("量子烤面包机.md")


def test_a_tenant_key_reads_its_bases_without_upload_or_removal(page: Page, site: Site):
    sign_in(page, site, site.tenant_key)
    page.get_by_role("link", name="知识库").click()
    expect(page.get_by_test_id("document").first).to_be_visible()
    expect(page.get_by_role("heading", name="上传文档")).to_have_count(0)
    expect(page.get_by_role("button", name="删除")).to_have_count(0)
    page.get_by_role("button", name="查看段落").first.click()
    expect(page.get_by_test_id("passage")).not_to_have_count(0)
    page.get_by_label("问题").fill("火星基地几点开门？")
    page.get_by_role("button", name="检索").click()
    expect(page.get_by_test_id("gate")).to_contain_text("没有段落通过相关性门槛")


def test_the_knowledge_page_fits_a_phone_and_the_keyboard_reaches_the_hit_test(
    page: Page, site: Site
):
    page.set_viewport_size(PHONE)
    sign_in(page, site, site.admin_key)
    page.goto(f"{site.url}/console/kb")
    expect(page.get_by_test_id("document")).not_to_have_count(0)
    for _ in range(20):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "hit-question":
            break
    expect(page.get_by_label("问题")).to_be_focused()
    page.keyboard.type("星尘打印机保修多久？")
    page.keyboard.press("Enter")
    expect(page.get_by_test_id("gate")).to_contain_text("通过相关性门槛")
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
