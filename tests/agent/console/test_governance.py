"""The governance page in headless chromium: an admin issues a key, sees its secret once,
revokes it, and the revoked key can no longer sign in; limits, sensitive words and gray release
are shown; a tenant's key gets neither the page's link nor its data."""

from __future__ import annotations

from playwright.sync_api import Browser, Page, expect

from tests.agent.console.site import PHONE, Site, sign_in


def test_an_issued_key_is_shown_once_and_once_revoked_cannot_sign_in(
    page: Page, site: Site, browser: Browser
):
    sign_in(page, site, site.admin_key)
    page.get_by_role("link", name="治理").click()
    acme = page.get_by_test_id("tenant-acme")
    expect(acme).to_contain_text("知识库 default")
    acme.get_by_label("备注").fill("测试机器人")
    acme.get_by_role("button", name="为 acme 签发密钥").click()
    secret_box = page.get_by_test_id("secret")
    expect(secret_box).to_contain_text("qqrag-")
    expect(page.get_by_role("status")).to_contain_text("只显示这一次")
    secret = secret_box.inner_text()
    row = acme.locator("tr").filter(has_text="测试机器人")
    expect(row).to_contain_text("有效")

    other = browser.new_context(locale="zh-CN")
    try:
        second = other.new_page()
        sign_in(second, site, secret)
        expect(second.get_by_test_id("who")).to_have_text("租户密钥 · 租户 acme")
        expect(second.get_by_role("link", name="治理")).to_be_hidden()
    finally:
        other.close()

    page.reload()
    expect(page.get_by_test_id("tenant-acme")).to_be_visible()
    expect(page.get_by_test_id("secret")).to_have_count(0)
    expect(page.get_by_text(secret)).to_have_count(0)

    page.once("dialog", lambda dialog: dialog.accept())
    row.get_by_role("button", name="吊销").click()
    expect(page.get_by_role("status")).to_contain_text("立即失效")
    expect(row).to_contain_text("已吊销")
    expect(row.get_by_role("button", name="吊销")).to_have_count(0)

    refused = browser.new_context(locale="zh-CN")
    try:
        third = refused.new_page()
        third.goto(f"{site.url}/console/signin")
        third.get_by_label("API 密钥").fill(secret)
        third.keyboard.press("Enter")
        expect(third.get_by_role("alert")).to_contain_text("无效的 API Key")
    finally:
        refused.close()


def test_limits_sensitive_words_and_gray_release_are_shown(page: Page, site: Site):
    sign_in(page, site, site.admin_key)
    page.goto(f"{site.url}/console/governance")
    limits = page.get_by_test_id("limits")
    expect(limits).to_contain_text("每个用户每分钟提问")
    expect(limits).to_contain_text("现在 0 轮")
    expect(page.get_by_test_id("profiles")).to_contain_text("default（默认）")
    expect(page.get_by_test_id("rules")).to_contain_text("其余 → default")
    expect(page.get_by_role("heading", name="敏感词（最近 7 天）")).to_be_visible()


def test_a_tenant_key_is_refused_the_governance_data(page: Page, site: Site):
    sign_in(page, site, site.tenant_key)
    expect(page.get_by_role("link", name="治理")).to_be_hidden()
    page.goto(f"{site.url}/console/governance")
    expect(page.locator("#tenants")).to_contain_text("需要管理员密钥")


def test_the_governance_page_fits_a_phone_and_issues_a_key_from_the_keyboard(
    page: Page, site: Site
):
    page.set_viewport_size(PHONE)
    sign_in(page, site, site.admin_key)
    page.goto(f"{site.url}/console/governance")
    expect(page.get_by_test_id("tenant-ops")).to_be_visible()
    expect(page.get_by_test_id("limits")).to_be_visible()
    for _ in range(30):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.name") == "label":
            break
    page.keyboard.type("键盘签发")
    page.keyboard.press("Enter")
    expect(page.get_by_test_id("secret")).to_contain_text("qqrag-")
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
