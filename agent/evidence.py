"""How passages and the conversation are shown to the models."""

from __future__ import annotations

import re
from collections.abc import Iterable

from langchain_core.messages import AIMessage, AnyMessage, BaseMessage, HumanMessage

from agent.models import message_text
from agent.policy.safety import fold
from tools.base import Passage

FENCES = frozenset({"context", "question"})
"""The blocks of the answer prompt (`<context>`, `<question>`) that text put inside must not
open or close."""
# Anything tag-shaped, with ASCII or full-width brackets; `fold` decides which are fences.
_TAG = re.compile(r"[<＜﹤]([^<>＜＞﹤﹥\n]{1,40})[>＞﹥]")
_TAG_NAME = re.compile(r"\s*/?\s*([a-z]+)")
_DEFANGED = str.maketrans("<＜﹤>＞﹥", "‹‹‹›››")
_LEADING_NUMBER = re.compile(r"^\[(\d+)\]", re.MULTILINE)
_HISTORY_ANSWER_CHARS = 200


def _defang(match: re.Match[str]) -> str:
    # Folded as the sensitive words are, so "＜／ＣＯＮＴＥＸＴ＞" or a zero-width space inside
    # the name does not slip past: a model reads those as the tag too.
    name = _TAG_NAME.match(fold(match.group(1)))
    if name is None or name.group(1) not in FENCES:
        return match.group(0)
    return match.group(0).translate(_DEFANGED)


def fenced(text: str) -> str:
    """`text` made safe to put inside a block of the answer prompt: it can neither close nor
    open a fence (`</context>` turns into `‹/context›`), nor start a numbered passage of its
    own (`[2]` at a line start turns into `［2］`)."""
    return _LEADING_NUMBER.sub(r"［\1］", _TAG.sub(_defang, text))


def format_evidence(numbered: Iterable[tuple[int, Passage]]) -> str:
    """Numbered passages, `[n] title（来源：source）` then the text, for the answer prompt."""
    blocks = []
    for number, passage in numbered:
        header = f"[{number}] {fenced(passage['title'])}（来源：{fenced(passage['source'])}）"
        blocks.append(f"{header}\n{fenced(passage['text'])}")
    return "\n\n".join(blocks)


def current_question(messages: list[AnyMessage]) -> str:
    """The text of the latest user message."""
    for message in reversed(messages):
        if isinstance(message, HumanMessage):
            return message_text(message)
    return ""


def exchanges(messages: list[AnyMessage]) -> list[tuple[str, str | None]]:
    """The conversation as (question, answer) pairs, oldest first; answer None while pending.

    Commands and their replies are left out: nothing a follow-up could refer to, nothing to rate.
    """
    pairs: list[tuple[str, str | None]] = []
    skipping = False
    for message in messages:
        if isinstance(message, HumanMessage):
            text = message_text(message)
            skipping = text.startswith(("/", "／"))
            if not skipping:
                pairs.append((text, None))
        elif isinstance(message, AIMessage) and not message.tool_calls and pairs and not skipping:
            pairs[-1] = (pairs[-1][0], message_text(message))
    return pairs


def last_exchange(messages: list[AnyMessage]) -> tuple[str, str] | None:
    """The latest answered (question, answer) pair, or None before the first answer."""
    answered = [(q, a) for q, a in exchanges(messages) if a is not None]
    return answered[-1] if answered else None


def recent_exchanges(messages: list[AnyMessage], turns: int) -> list[tuple[str, str]]:
    """Up to `turns` earlier answered (question, answer) pairs, oldest first."""
    answered = [(q, a) for q, a in exchanges(messages) if a is not None]
    return answered[-turns:] if turns > 0 else []


def history_messages(pairs: list[tuple[str, str]]) -> list[BaseMessage]:
    """Question/answer pairs as messages for a model."""
    history: list[BaseMessage] = []
    for question, answer in pairs:
        history += [
            HumanMessage(content=question),
            AIMessage(content=answer[:_HISTORY_ANSWER_CHARS]),
        ]
    return history


def recent_history(messages: list[AnyMessage], turns: int) -> list[BaseMessage]:
    """Up to `turns` earlier answered question/answer pairs, as messages for a model."""
    return history_messages(recent_exchanges(messages, turns))
