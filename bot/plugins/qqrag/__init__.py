"""知识库问答: QQ messages in, answers with citations out, through the qqrag HTTP service.

`ask` forwards every message addressed to the bot to `/v1/chat`, commands (`/帮助`, `/反馈 好`,
…) included: the service's command registry (`agent.commands`) answers them, once, for every
front end.
"""

from __future__ import annotations

import asyncio

from nonebot import get_driver, get_plugin_config, on_message
from nonebot.adapters import Bot, Event
from nonebot.plugin import PluginMetadata
from nonebot.rule import Rule
from nonebot.typing import T_State

from agent.commands import help_lines
from bot.config import Config

from .client import Answer, ServiceClient, ServiceError, Speaker
from .format import compose_reply
from .platforms import Replier, addressed, replier_for

__plugin_meta__ = PluginMetadata(
    name="知识库问答",
    description="在 QQ 里回答知识库中的问题并标注出处（对接 qqrag 服务）",
    usage=(
        "群聊：@我 后面写问题，或回复我的消息、以我的昵称开头；私聊：直接发问题。\n"
        f"命令：{help_lines()}。"
    ),
    type="application",
    config=Config,
    supported_adapters={"~onebot.v11", "~qq"},
)

plugin_config = get_plugin_config(Config)
service = ServiceClient(
    plugin_config.qqrag_bot_service_url,
    api_key=plugin_config.qqrag_bot_api_key.get_secret_value(),
    timeout=plugin_config.qqrag_bot_timeout,
    max_connections=plugin_config.qqrag_bot_max_connections,
)
get_driver().on_shutdown(service.close)

_SPEAKER = "qqrag_speaker"
_QUESTION = "qqrag_question"


def _is_question(event: Event, state: T_State) -> bool:
    found = addressed(event, plugin_config.qqrag_bot_nicknames)
    if found is None:
        return False
    state[_SPEAKER], state[_QUESTION] = found
    return True


ask = on_message(rule=Rule(_is_question), priority=99, block=True)


@ask.handle()
async def answer_question(bot: Bot, event: Event, state: T_State) -> None:
    replier = replier_for(bot, event, plugin_config)
    question: str = state[_QUESTION]
    if not question:
        await replier.say(replier.ask_prompt())
        await ask.finish()
    try:
        answer = await _chat(state[_SPEAKER], question, replier)
    except ServiceError as exc:
        await replier.say(exc.user_message)
        await ask.finish()
    await replier.answer(compose_reply(answer.answer, answer.citations))
    await ask.finish()


async def _chat(speaker: Speaker, question: str, replier: Replier) -> Answer:
    """The service's answer; one "please wait" notice if it takes longer than configured."""
    call = asyncio.create_task(service.chat(speaker, question))
    try:
        delay = plugin_config.qqrag_bot_notice_after
        if delay > 0:
            done, _ = await asyncio.wait({call}, timeout=delay)
            if not done:
                await replier.notice(plugin_config.qqrag_bot_notice_text)
        return await call
    finally:
        call.cancel()
