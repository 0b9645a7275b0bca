"""The conversations page in headless chromium: a turn asked in the playground is found in the
list and opened with its trace; feedback and knowledge gaps are listed; a tenant's key sees only
its own tenant's turns."""

from __future__ import annotations

import httpx
from playwright.sync_api import Page, expect

from tests.agent.console.site import PHONE, Site, sign_in

QUESTION = "星尘打印机支持哪些耗材？"


def test_a_playground_turn_is_found_in_the_list_and_opened_with_its_trace(page: Page, site: Site):
    sign_in(page, site, site.admin_key)
    page.get_by_role("link", name="试答").click()
    page.get_by_label("租户").fill("acme")
    page.get_by_label("群号").fill("20261206")
    page.get_by_label("问题").fill(QUESTION)
    page.keyboard.press("Enter")
    expect(page.get_by_test_id("answer")).to_contain_text("PLA")

    page.get_by_role("link", name="对话").click()
    page.get_by_label("搜索").fill("20261206")
    page.keyboard.press("Enter")
    turn = page.get_by_test_id("turn")
    expect(turn).to_have_count(1)
    expect(turn).to_contain_text("acme")
    expect(turn).to_contain_text("20261206")
    expect(turn).to_contain_text("知识问答")
    expect(turn).to_contain_text(QUESTION)

    turn.get_by_role("button", name="打开").click()
    opened = page.get_by_test_id("conversation")
    expect(opened).to_contain_text("acme:console:group:20261206:console")
    expect(opened.get_by_test_id("conversation-turn")).to_have_count(1)
    expect(opened).to_contain_text("已回答")
    expect(opened).to_contain_text("节点耗时")
    expect(opened).to_contain_text("被引用")


def test_feedback_and_gaps_are_listed_and_filters_narrow_the_turns(page: Page, site: Site):
    speaker = {"scene": "private", "user_id": "30001"}
    headers = {"Authorization": f"Bearer {site.tenant_key}"}
    for text in ("火星基地几点开门？", "火星基地几点开门？"):
        body = {**speaker, "text": text}
        httpx.post(f"{site.url}/v1/chat", json=body, headers=headers, timeout=30).raise_for_status()
    rated = {**speaker, "rating": "bad", "comment": "没有回答火星基地"}
    httpx.post(
        f"{site.url}/v1/feedback", json=rated, headers=headers, timeout=30
    ).raise_for_status()

    sign_in(page, site, site.admin_key)
    page.goto(f"{site.url}/console/conversations")
    expect(page.get_by_test_id("feedback").first).to_contain_text("没有回答火星基地")
    expect(page.get_by_test_id("gap").filter(has_text="火星基地几点开门？")).to_contain_text("2")
    page.get_by_label("搜索").fill("火星基地")
    page.get_by_label("意图").select_option("chitchat")
    page.get_by_role("button", name="查找").click()
    expect(page.get_by_test_id("turns")).to_contain_text("没有符合条件的问答")
    page.get_by_label("意图").select_option("")
    page.get_by_role("button", name="查找").click()
    expect(page.get_by_test_id("turn")).to_have_count(2)
    expect(page.get_by_test_id("turn").first).to_contain_text("👎 没用")


def test_a_tenant_key_sees_its_own_turns_on_a_phone_without_the_gaps(page: Page, site: Site):
    site.ask(site.tenant_key, "月光扫地机器人续航多久？")
    page.set_viewport_size(PHONE)
    sign_in(page, site, site.tenant_key)
    page.get_by_role("link", name="对话").click()
    expect(page.get_by_test_id("turn").first).to_be_visible()
    expect(page.get_by_label("租户")).to_be_hidden()
    expect(page.get_by_role("heading", name="知识缺口（最近 7 天）")).to_be_hidden()
    for tenant in page.get_by_test_id("turn").locator("td:nth-child(2)").all_inner_texts():
        assert tenant == "acme"
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
