"""How passages and the conversation are shown to the models."""

from __future__ import annotations

import re
from collections.abc import Iterable

from langchain_core.messages import AIMessage, AnyMessage, BaseMessage, HumanMessage

from agent.models import message_text
from tools.base import Passage

_FENCE = re.compile(r"</?\s*context\s*>", re.IGNORECASE)
_LEADING_NUMBER = re.compile(r"^\[(\d+)\]", re.MULTILINE)
_HISTORY_ANSWER_CHARS = 200


def _fenced(text: str) -> str:
    # A passage must not close the evidence fence or fake a passage number of its own.
    text = _FENCE.sub(lambda m: m.group(0).replace("<", "‹").replace(">", "›"), text)
    return _LEADING_NUMBER.sub(r"［\1］", text)


def format_evidence(numbered: Iterable[tuple[int, Passage]]) -> str:
    """Numbered passages, `[n] title（来源：source）` then the text, for the answer prompt."""
    blocks = []
    for number, passage in numbered:
        header = f"[{number}] {_fenced(passage['title'])}（来源：{_fenced(passage['source'])}）"
        blocks.append(f"{header}\n{_fenced(passage['text'])}")
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
