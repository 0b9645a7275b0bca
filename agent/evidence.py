"""How passages and the conversation are shown to the models."""

from __future__ import annotations

import re
from collections.abc import Iterable

from langchain_core.messages import AIMessage, AnyMessage, BaseMessage, HumanMessage

from agent.models import message_text
from tools.base import Passage

_FENCE = re.compile(r"</?\s*context\s*>", re.IGNORECASE)
_LEADING_NUMBER = re.compile(r"^\[(\d+)\]", re.MULTILINE)
_HISTORY_ANSWER_CHARS = 400


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


def recent_history(messages: list[AnyMessage], turns: int) -> list[BaseMessage]:
    """Up to `turns` earlier question/answer pairs, before the latest user message.

    Answers are shortened: the models need the subject of the conversation, not its details.
    """
    if turns <= 0:
        return []
    last_human = max(
        (i for i, m in enumerate(messages) if isinstance(m, HumanMessage)), default=None
    )
    earlier = messages[:last_human] if last_human is not None else messages
    history: list[BaseMessage] = []
    for message in earlier:
        if isinstance(message, HumanMessage):
            history.append(HumanMessage(content=message_text(message)))
        elif isinstance(message, AIMessage) and not message.tool_calls:
            history.append(AIMessage(content=message_text(message)[:_HISTORY_ANSWER_CHARS]))
    starts = [i for i, m in enumerate(history) if isinstance(m, HumanMessage)]
    return history[starts[-turns] :] if len(starts) > turns else history
