"""What differs between OneBot v11 and the official QQ API: who is asking, and how to reply."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from nonebot.adapters import Bot, Event
from nonebot.adapters.onebot.v11 import GroupMessageEvent as OneBotGroupMessageEvent
from nonebot.adapters.onebot.v11 import Message as OneBotMessage
from nonebot.adapters.onebot.v11 import MessageEvent as OneBotMessageEvent
from nonebot.adapters.onebot.v11 import MessageSegment as OneBotSegment
from nonebot.adapters.qq import C2CMessageCreateEvent as QQC2CMessageEvent
from nonebot.adapters.qq import DirectMessageCreateEvent as QQGuildDirectMessageEvent
from nonebot.adapters.qq import GroupMessageCreateEvent as QQGroupMessageEvent
from nonebot.adapters.qq import GuildMessageEvent as QQGuildMessageEvent
from nonebot.exception import AdapterException
from nonebot.log import logger

from bot.config import Config

from .client import Speaker
from .format import clean_text, fit_parts, mask_links, split_text, strip_nickname

ASK_IN_GROUP = "请在 @我 后面写上问题。"
ASK_IN_PRIVATE = "请直接发送文字问题。"

_QQ_EVENTS = (QQGroupMessageEvent, QQC2CMessageEvent, QQGuildMessageEvent)


def speaker_of(event: Event) -> Speaker | None:
    """The service's view of who sent `event`; None for events the plugin does not answer."""
    if isinstance(event, OneBotGroupMessageEvent):
        return Speaker(
            "onebot", "group", str(event.user_id), str(event.group_id), str(event.message_id)
        )
    if isinstance(event, OneBotMessageEvent):
        return Speaker("onebot", "private", str(event.user_id), None, str(event.message_id))
    if isinstance(event, QQGroupMessageEvent):
        return Speaker("qq", "group", event.author.member_openid, event.group_openid, event.id)
    if isinstance(event, QQC2CMessageEvent):
        return Speaker("qq", "private", event.author.user_openid, None, event.id)
    if isinstance(event, QQGuildDirectMessageEvent):
        return Speaker("qq", "private", event.author.id, None, event.id)
    if isinstance(event, QQGuildMessageEvent):
        return Speaker("qq", "group", event.author.id, event.channel_id, event.id)
    return None


def _mentions_self(event: Event) -> bool:
    """An @ of the bot anywhere in a OneBot message (the adapter only looks at both ends)."""
    return isinstance(event, OneBotMessageEvent) and any(
        segment.type == "at" and str(segment.data.get("qq")) == str(event.self_id)
        for segment in event.get_message()
    )


def addressed(event: Event, nicknames: list[str]) -> tuple[Speaker, str] | None:
    """Who asks and the cleaned question, when `event` is meant for the bot; else None.

    Meant for the bot: a private chat, an @ of the bot, a reply to one of its messages (the
    adapters set `to_me` for these), or, in a group, a configured nickname at the start.
    """
    speaker = speaker_of(event)
    if speaker is None:
        return None
    text = clean_text(event.get_message().extract_plain_text())
    if event.is_tome() or speaker.scene == "private" or _mentions_self(event):
        return speaker, text
    question = strip_nickname(text, nicknames)
    return None if question is None else (speaker, question)


def replier_for(bot: Bot, event: Event, config: Config) -> Replier:
    """The reply manners of the platform `event` came from."""
    if isinstance(event, _QQ_EVENTS):
        return QQReplier(bot, event, config)
    return OneBotReplier(bot, event, config)


class Replier(ABC):
    """Sends the replies to one message; a failed send is logged and ends the reply."""

    def __init__(self, bot: Bot, event: Event, config: Config) -> None:
        self.bot = bot
        self.event = event
        self.config = config
        speaker = speaker_of(event)
        self.in_group = speaker is not None and speaker.scene == "group"

    def ask_prompt(self) -> str:
        """What to say when the message holds no question."""
        return ASK_IN_GROUP if self.in_group else ASK_IN_PRIVATE

    @abstractmethod
    async def say(self, text: str) -> None:
        """A short message: a prompt, an error, a notice."""

    @abstractmethod
    async def answer(self, text: str) -> None:
        """A full answer, cut to the platform's limits."""

    async def notice(self, text: str) -> None:
        """The optional "please wait" message, when the platform can spare one."""
        await self.say(text)

    async def _send(self, message: Any, **kwargs: Any) -> bool:
        try:
            await self.bot.send(self.event, message, **kwargs)
        except AdapterException as exc:
            logger.warning(f"bot {self.bot.self_id} could not send a reply: {exc!r}")
            return False
        return True


class OneBotReplier(Replier):
    """Replies quote the question; long answers in groups go out as one merged forward.

    Text travels as text segments: a plain string would be parsed for CQ codes.
    """

    async def say(self, text: str) -> None:
        await self._send(OneBotSegment.text(text), reply_message=True)

    async def answer(self, text: str) -> None:
        if self.config.qqrag_bot_onebot_mask_links:
            text = mask_links(text)
        parts = split_text(text, self.config.qqrag_bot_max_chars)
        threshold = self.config.qqrag_bot_forward_threshold
        if self.in_group and threshold and len(text) > threshold and await self._forward(parts):
            return
        for number, part in enumerate(parts):
            if not await self._send(OneBotSegment.text(part), reply_message=number == 0):
                return

    async def _forward(self, parts: list[str]) -> bool:
        assert isinstance(self.event, OneBotGroupMessageEvent)
        nodes = [
            OneBotSegment.node_custom(
                user_id=int(self.bot.self_id),
                nickname=self.config.qqrag_bot_forward_name,
                content=OneBotMessage(OneBotSegment.text(part)),
            )
            for part in parts
        ]
        try:
            await self.bot.call_api(
                "send_group_forward_msg", group_id=self.event.group_id, messages=nodes
            )
        except AdapterException as exc:
            # Not every OneBot implementation has merged forwards; plain messages still work.
            logger.warning(f"merged forward failed, sending plain messages: {exc!r}")
            return False
        return True


class QQReplier(Replier):
    """Passive replies: links masked, at most `qq_max_replies` messages per question.

    The adapter's `send` sets `msg_id` to the event's id and counts `msg_seq` up per reply.
    """

    def __init__(self, bot: Bot, event: Event, config: Config) -> None:
        super().__init__(bot, event, config)
        self.replies_left = config.qqrag_bot_qq_max_replies

    async def say(self, text: str) -> None:
        if self.replies_left > 0:
            self.replies_left -= 1
            await self._send(mask_links(text))

    async def notice(self, text: str) -> None:
        # The answer needs at least one of the passive replies left.
        if self.replies_left > 1:
            await self.say(text)

    async def answer(self, text: str) -> None:
        limit = self.config.qqrag_bot_max_chars
        parts = split_text(mask_links(text), limit)
        for part in fit_parts(parts, self.replies_left, limit):
            self.replies_left -= 1
            if not await self._send(part):
                return
