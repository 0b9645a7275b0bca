"""The console's user flows in headless chromium against a running service: sign in, status
at a glance, the playground's live trace; by keyboard, on a phone-wide window, and with a
tenant's key that sees only its tenant."""

from __future__ import annotations

import re

from playwright.sync_api import Page, expect

from tests.agent.console.site import PHONE, Site, sign_in

QUESTION = "星尘打印机保修多久？"


def test_a_wrong_key_is_refused_and_the_admin_sees_every_dependency_and_the_charts(
    page: Page, site: Site
):
    page.goto(f"{site.url}/console/signin")
    page.get_by_label("API 密钥").fill("qqrag-wrong")
    page.get_by_role("button", name="登录").click()
    expect(page.get_by_role("alert")).to_contain_text("无效的 API Key")

    site.ask(site.tenant_key, QUESTION)
    sign_in(page, site, site.admin_key)
    expect(page.get_by_test_id("who")).to_have_text("管理员 · 租户 ops")
    expect(page.get_by_test_id("overall")).to_have_text("正常")
    for dependency in ("sqlite", "storage", "knowledge", "ollama"):
        expect(page.get_by_test_id(f"check-{dependency}")).to_contain_text("正常")
    expect(page.get_by_test_id("chart")).to_have_count(6)
    expect(page.get_by_text("全部租户")).to_be_visible()
    turns = page.get_by_test_id("chart").filter(has_text="每分钟提问")
    expect(turns).to_contain_text(re.compile(r"共 [1-9]\d* 次"))
    expect(turns.locator("rect").first).to_be_attached()

    page.get_by_role("button", name="1 小时").click()
    expect(page.get_by_role("heading", name=re.compile("最近 1 小时"))).to_be_visible()
    expect(page.get_by_role("button", name="1 小时")).to_have_attribute("aria-pressed", "true")

    page.get_by_role("button", name="退出").click()
    expect(page).to_have_url(f"{site.url}/console/signin")
    page.goto(f"{site.url}/console/")
    expect(page).to_have_url(f"{site.url}/console/signin")


def test_the_playground_asks_as_a_tenant_and_shows_each_node_of_the_trace(page: Page, site: Site):
    sign_in(page, site, site.admin_key)
    page.get_by_role("link", name="试答").click()
    expect(page.get_by_label("档案（灰度版本）")).to_contain_text("default（默认）")
    page.get_by_label("租户").fill("acme")
    page.get_by_label("场景").select_option("private")
    page.get_by_label("问题").fill(QUESTION)
    page.get_by_role("button", name="提问").click()

    expect(page.get_by_test_id("answer")).to_contain_text("保修两年")
    trace = page.get_by_test_id("trace")
    for node in ("classify", "retrieve", "rerank", "answer", "cite_check"):
        expect(trace.locator(f"li[data-node={node}]")).to_be_visible()
    classify = trace.locator("li[data-node=classify]")
    expect(classify).to_contain_text("意图")
    rerank = trace.locator("li[data-node=rerank]")
    expect(rerank).to_contain_text("选用的证据")
    answer = trace.locator("li[data-node=answer]")
    expect(answer).to_contain_text(re.compile(r"\d+ \+ \d+ tokens"))
    answer.get_by_text("模型调用").click()
    expect(answer).to_contain_text("发送的提示词")
    expect(answer).to_contain_text("模型原始输出")
    expect(trace.locator("li[data-node=cite_check]")).to_contain_text("引用核验：有依据 100%")
    expect(page.locator("#citations li")).to_have_count(1)
    expect(page.locator("#answer-meta")).to_contain_text("对话 acme:console:private:console")

    page.get_by_role("button", name="清空这段对话").click()
    expect(page.locator("#answer-meta")).to_have_text("这段对话已清空，下一个问题从头开始。")


def test_the_keyboard_alone_reaches_the_question_and_enter_asks_it(page: Page, site: Site):
    sign_in(page, site, site.admin_key)
    page.goto(f"{site.url}/console/playground")
    expect(page.get_by_label("档案（灰度版本）")).to_contain_text("default")
    for _ in range(20):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "question":
            break
    expect(page.get_by_label("问题")).to_be_focused()
    page.keyboard.type(QUESTION)
    page.keyboard.press("Enter")
    expect(page.get_by_test_id("answer")).to_contain_text("保修两年")


def test_a_phone_wide_window_shows_status_and_playground_without_sideways_scrolling(
    page: Page, site: Site
):
    page.set_viewport_size(PHONE)
    sign_in(page, site, site.admin_key)
    expect(page.get_by_test_id("chart")).to_have_count(6)
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    page.get_by_role("link", name="试答").click()
    page.get_by_label("问题").fill(QUESTION)
    page.get_by_role("button", name="提问").click()
    expect(page.get_by_test_id("answer")).to_contain_text("保修两年")
    expect(page.get_by_test_id("trace").locator("li")).not_to_have_count(0)
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]


def test_a_tenant_key_sees_its_own_tenant_and_asks_without_the_admins_trace(page: Page, site: Site):
    sign_in(page, site, site.tenant_key)
    expect(page.get_by_test_id("who")).to_have_text("租户密钥 · 租户 acme")
    expect(page.locator("#activity-title")).to_contain_text("租户 acme")
    page.get_by_role("link", name="试答").click()
    expect(page.get_by_label("租户")).to_have_value("acme")
    expect(page.get_by_label("租户")).not_to_be_editable()
    expect(page.get_by_label("档案（灰度版本）")).to_be_hidden()
    page.get_by_label("问题").fill(QUESTION)
    page.keyboard.press("Enter")
    expect(page.get_by_test_id("answer")).to_contain_text("保修两年")
    trace = page.get_by_test_id("trace")
    expect(trace.locator("li[data-node=answer]")).to_be_visible()
    # The plain node events: no prompts, no raw output for a tenant's key.
    expect(trace.get_by_text("模型调用")).to_have_count(0)
