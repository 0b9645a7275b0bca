"""The plugin's matchers under nonebug, against a scripted qqrag service."""

from __future__ import annotations

from typing import Any

import nonebot
import pytest
from nonebot.adapters.onebot.v11 import Adapter as OneBotAdapter
from nonebot.adapters.onebot.v11 import Bot as OneBotBot
from nonebot.adapters.onebot.v11 import Message, MessageSegment
from nonebot.adapters.onebot.v11.exception import ActionFailed
from nonebot.adapters.qq import Adapter as QQAdapter
from nonebot.adapters.qq import Bot as QQBot
from nonebot.adapters.qq.config import BotInfo
from nonebug import App

from evals.fakes import qq as fake_qq
from evals.harness import free_port
from tests.bot.conftest import (
    GROUP_ID,
    SELF_ID,
    USER_ID,
    FakeService,
    onebot_group_event,
    onebot_private_event,
    qq_c2c_event,
    qq_group_event,
)

STARDUST = {
    "index": 1,
    "title": "星尘打印机 › 保修",
    "source": "kb/stardust.md",
    "passage_id": "p1",
    "snippet": "星尘打印机整机保修两年，喷头等易损件保修六个月。",
}
ANSWER = "星尘打印机整机保修两年，喷头等易损件保修六个月[1]。"
REPLY = f"{ANSWER}\n\n[1] stardust.md · 星尘打印机 › 保修"
# Sentences of 20 characters: 15 of them make 300 characters.
SENTENCE = "星尘打印机支持两种耗材，直径为一点七五。"
LONG_ANSWER = SENTENCE * 15


def onebot_bot(ctx: Any) -> OneBotBot:
    adapter = nonebot.get_adapter(OneBotAdapter)
    bot: OneBotBot = ctx.create_bot(base=OneBotBot, adapter=adapter, self_id=str(SELF_ID))
    return bot


def qq_bot(ctx: Any) -> QQBot:
    info = BotInfo(id=fake_qq.APP_ID, secret=fake_qq.SECRET)
    adapter = nonebot.get_adapter(QQAdapter)
    bot: QQBot = ctx.create_bot(base=QQBot, adapter=adapter, self_id=info.id, bot_info=info)
    return bot


def text(value: str) -> MessageSegment:
    return MessageSegment.text(value)


def forward_node(value: str) -> MessageSegment:
    return MessageSegment.node_custom(SELF_ID, "知识库助手", Message(text(value)))


async def test_group_at_is_answered_quoting_the_question_with_citations(
    app: App, service: FakeService
) -> None:
    from bot.plugins.qqrag import ask

    service.answer(ANSWER, [STARDUST, STARDUST | {"index": 2, "passage_id": "p2"}])
    event = onebot_group_event(
        Message([text("星尘打印机"), MessageSegment.face(14), text("保修多久？")])
        + MessageSegment.image("https://img.example.com/a.png")
    )
    async with app.test_matcher(ask) as ctx:
        bot = onebot_bot(ctx)
        ctx.receive_event(bot, event)
        ctx.should_call_send(
            event,
            text(f"{ANSWER}\n\n[1][2] stardust.md · 星尘打印机 › 保修"),
            result={"message_id": 99},
            reply_message=True,
        )
        ctx.should_finished(ask)

    [(path, body, headers)] = service.requests
    assert path == "/v1/chat"
    assert body == {
        "platform": "onebot",
        "scene": "group",
        "group_id": str(GROUP_ID),
        "user_id": str(USER_ID),
        "message_id": "42",
        "text": "星尘打印机保修多久？",
    }
    assert headers["authorization"] == "Bearer service-key"


async def test_private_chat_is_always_answered(app: App, service: FakeService) -> None:
    from bot.plugins.qqrag import ask

    service.answer(ANSWER, [STARDUST])
    event = onebot_private_event("星尘打印机保修多久？")
    async with app.test_matcher(ask) as ctx:
        ctx.receive_event(onebot_bot(ctx), event)
        ctx.should_call_send(event, text(REPLY), result={"message_id": 99}, reply_message=True)
        ctx.should_finished(ask)

    body = service.requests[0][1]
    assert (body["scene"], body["group_id"], body["user_id"]) == ("private", None, str(USER_ID))


async def test_group_message_not_addressed_to_the_bot_is_ignored(
    app: App, service: FakeService
) -> None:
    event = onebot_group_event("星尘打印机保修多久？", to_me=False)
    async with app.test_matcher() as ctx:
        ctx.receive_event(onebot_bot(ctx), event)
        ctx.should_not_pass_rule()
    assert service.requests == []


@pytest.mark.parametrize(
    "message",
    [
        Message("小知，星尘打印机保修多久？"),
        Message([text("请问 "), MessageSegment.at(SELF_ID), text(" 星尘打印机保修多久？")]),
    ],
    ids=["nickname", "at-in-the-middle"],
)
async def test_a_nickname_or_an_at_anywhere_addresses_the_bot(
    app: App, service: FakeService, message: Message
) -> None:
    from bot.plugins.qqrag import ask

    service.answer(ANSWER, [STARDUST])
    event = onebot_group_event(message, to_me=False)
    async with app.test_matcher(ask) as ctx:
        ctx.receive_event(onebot_bot(ctx), event)
        ctx.should_call_send(event, text(REPLY), result={"message_id": 99}, reply_message=True)
    assert service.requests[0][1]["text"].endswith("星尘打印机保修多久？")
    assert "小知" not in service.requests[0][1]["text"]


async def test_an_at_without_a_question_gets_a_prompt_not_a_service_call(
    app: App, service: FakeService
) -> None:
    from bot.plugins.qqrag import ask

    event = onebot_group_event(Message(MessageSegment.image("https://img.example.com/a.png")))
    async with app.test_matcher() as ctx:
        ctx.receive_event(onebot_bot(ctx), event)
        ctx.should_call_send(event, text("请在 @我 后面写上问题。"), result={}, reply_message=True)
        ctx.should_finished(ask)
    assert service.requests == []


@pytest.mark.parametrize("command", ["/帮助", "/重置", "/原文 1"])
async def test_service_commands_are_forwarded_as_text(
    app: App, service: FakeService, command: str
) -> None:
    from bot.plugins.qqrag import ask

    service.answer("命令的回答", intent="command")
    event = onebot_group_event(f" {command} ")
    async with app.test_matcher(ask) as ctx:
        ctx.receive_event(onebot_bot(ctx), event)
        ctx.should_call_send(event, text("命令的回答"), result={}, reply_message=True)
    assert service.requests[0][1]["text"] == command


def test_the_plugin_usage_lists_the_service_commands() -> None:
    from agent.commands import help_lines
    from bot.plugins.qqrag import __plugin_meta__

    assert help_lines() in __plugin_meta__.usage


@pytest.mark.parametrize("command", ["/反馈 差 没有回答到点子上", "/反馈", "／feedback meh"])
async def test_feedback_goes_to_the_service_like_every_command(
    app: App, service: FakeService, command: str
) -> None:
    """The service's command registry parses /反馈 once, for the bot and every other front end."""
    from bot.plugins.qqrag import ask

    service.answer("收到，谢谢你的反馈！", intent="command")
    event = onebot_group_event(command)
    async with app.test_matcher(ask) as ctx:
        ctx.receive_event(onebot_bot(ctx), event)
        ctx.should_call_send(event, text("收到，谢谢你的反馈！"), result={}, reply_message=True)
        ctx.should_finished(ask)
    [(path, body, _)] = service.requests
    assert path == "/v1/chat"
    assert body["text"] == command and body["message_id"] == "42"


async def test_a_long_group_answer_goes_out_as_one_merged_forward(
    app: App, service: FakeService
) -> None:
    from bot.plugins.qqrag import ask

    service.answer(LONG_ANSWER)
    event = onebot_group_event("星尘打印机支持哪些耗材？")
    nodes = [forward_node(SENTENCE * 5)] * 3
    async with app.test_matcher(ask) as ctx:
        ctx.receive_event(onebot_bot(ctx), event)
        ctx.should_call_api(
            "send_group_forward_msg", {"group_id": GROUP_ID, "messages": nodes}, result={}
        )
        ctx.should_finished(ask)


async def test_without_merged_forwards_a_long_answer_is_split_at_sentences(
    app: App, service: FakeService
) -> None:
    from bot.plugins.qqrag import ask

    service.answer(LONG_ANSWER)
    event = onebot_group_event("星尘打印机支持哪些耗材？")
    async with app.test_matcher(ask) as ctx:
        ctx.receive_event(onebot_bot(ctx), event)
        ctx.should_call_api(
            "send_group_forward_msg",
            {"group_id": GROUP_ID, "messages": [forward_node(SENTENCE * 5)] * 3},
            exception=ActionFailed(retcode=1200, msg="unsupported"),
        )
        for number in range(3):
            ctx.should_call_send(event, text(SENTENCE * 5), result={}, reply_message=number == 0)


async def test_long_private_answers_are_split_without_forwarding(
    app: App, service: FakeService
) -> None:
    from bot.plugins.qqrag import ask

    service.answer(LONG_ANSWER)
    event = onebot_private_event("星尘打印机支持哪些耗材？")
    async with app.test_matcher(ask) as ctx:
        ctx.receive_event(onebot_bot(ctx), event)
        for number in range(3):
            ctx.should_call_send(event, text(SENTENCE * 5), result={}, reply_message=number == 0)


async def test_official_api_replies_carry_no_links(app: App, service: FakeService) -> None:
    from bot.plugins.qqrag import ask

    service.answer(
        "详见 https://docs.example.com/guide 或 example.com，内网 http://10.0.0.8:8080/x。",
        [{"index": 1, "title": "指南", "source": "https://docs.example.com/a.html"}],
    )
    event = qq_group_event(" 在哪里看文档？")
    async with app.test_matcher(ask) as ctx:
        ctx.receive_event(qq_bot(ctx), event)
        ctx.should_call_send(
            event,
            "详见 docs[.]example[.]com/guide 或 example[.]com，内网 10[.]0[.]0[.]8:8080/x。"
            "\n\n[1] a[.]html · 指南",
            result=None,
        )
        ctx.should_finished(ask)
    body = service.requests[0][1]
    assert (body["platform"], body["group_id"], body["user_id"]) == ("qq", "G1", "U1")
    assert body["message_id"] == "ROBOT1.0_msg1"


async def test_official_api_answers_fit_in_five_passive_replies(
    app: App, service: FakeService
) -> None:
    from bot.plugins.qqrag import ask
    from bot.plugins.qqrag.format import TRUNCATED

    service.answer(SENTENCE * 40)
    event = qq_c2c_event("星尘打印机支持哪些耗材？")
    async with app.test_matcher(ask) as ctx:
        ctx.receive_event(qq_bot(ctx), event)
        for _ in range(4):
            ctx.should_call_send(event, SENTENCE * 5, result=None)
        ctx.should_call_send(event, SENTENCE * 4 + TRUNCATED, result=None)
        ctx.should_finished(ask)
    assert service.requests[0][1]["scene"] == "private"


@pytest.mark.parametrize(
    ("failure", "reply"),
    [
        ("down", "知识库服务暂时连不上，请稍后再试。"),
        ("timeout", "知识库服务响应超时，请稍后再试。"),
        ("429", "今天的提问次数已用完，请明天再来。"),
        ("503", "服务正忙，请 10 秒后再试。"),
        ("500", "知识库服务出错了，请稍后再试。"),
        ("507", "知识库服务的存储空间满了，暂时无法回答，请联系管理员。"),
        ("garbage", "知识库服务出错了，请稍后再试。"),
    ],
    ids=["down", "timeout", "429", "503", "500", "507", "garbage"],
)
async def test_service_failures_give_one_friendly_message(
    app: App, service: FakeService, monkeypatch: pytest.MonkeyPatch, failure: str, reply: str
) -> None:
    from bot.plugins.qqrag import ask
    from bot.plugins.qqrag import service as client

    if failure == "down":
        monkeypatch.setattr(client, "base_url", f"http://127.0.0.1:{free_port()}")
    elif failure == "timeout":
        monkeypatch.setattr(client, "timeout", 0.2)
        service.answer(ANSWER, delay=1.0)
    elif failure == "429":
        service.fail(429, "quota_exceeded", reply, headers={"Retry-After": "3600"})
    elif failure == "503":
        service.fail(503, "busy", reply, headers={"Retry-After": "10"})
    elif failure == "500":
        service.fail(500, "internal_error", "服务内部出错了，请稍后再试。")
    elif failure == "507":
        service.fail(507, "storage_full", "服务器存储空间已满，暂时无法回答，请联系管理员。")
    else:
        service.send({"unexpected": True})
    event = onebot_group_event("星尘打印机保修多久？")
    async with app.test_matcher(ask) as ctx:
        ctx.receive_event(onebot_bot(ctx), event)
        ctx.should_call_send(event, text(reply), result={}, reply_message=True)
        ctx.should_finished(ask)


async def test_a_slow_answer_gets_one_notice_when_configured(
    app: App, service: FakeService, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bot.plugins.qqrag import ask, plugin_config

    monkeypatch.setattr(plugin_config, "qqrag_bot_notice_after", 0.1)
    service.answer(ANSWER, [STARDUST], delay=0.5)
    event = qq_group_event("星尘打印机保修多久？")
    async with app.test_matcher(ask) as ctx:
        ctx.receive_event(qq_bot(ctx), event)
        ctx.should_call_send(event, "正在查找资料，请稍候……", result=None)
        ctx.should_call_send(
            event, f"{ANSWER}\n\n[1] stardust[.]md · 星尘打印机 › 保修", result=None
        )
        ctx.should_finished(ask)
