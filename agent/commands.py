"""The chat commands (`/帮助`, `/重置`, `/原文 n`, `/反馈 …`): one registry for the graph's
`command` node, the help reply, the "unknown command" reply and the bot's usage text.

Adding a command is one `Command` entry and its handler. A handler gets the parsed call and
returns the reply; it may also reset the conversation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from langchain_core.messages import AnyMessage

from agent import prompts
from agent.audit import RATING_WORDS, AuditLog, Rating
from agent.evidence import last_exchange
from tools.base import Passage


@dataclass(frozen=True)
class CommandCall:
    """One command as a user sent it, with what its handler may read."""

    argument: str
    """The text after the command word, stripped."""
    messages: Sequence[AnyMessage]
    """The conversation, the command's own message last."""
    sources: Sequence[Passage]
    """The passages the last answer cited, in citation order."""
    thread: str
    message_id: str | None
    variant: str
    audit: AuditLog | None


@dataclass(frozen=True)
class Reply:
    text: str
    reset: bool = False
    """Clear the conversation (and its sources) after replying."""


@dataclass(frozen=True)
class Command:
    name: str
    """What users type, e.g. `/原文`."""
    aliases: tuple[str, ...]
    usage: str
    """The command with its arguments, as the help shows it: `/原文 n`."""
    summary: str
    """What it does, one clause in Chinese."""
    handler: Callable[[CommandCall], Reply]


def _help(call: CommandCall) -> Reply:
    return Reply(prompts.render("help", call.variant, commands=help_lines()))


def _reset(call: CommandCall) -> Reply:
    return Reply(prompts.render("reset", call.variant), reset=True)


def _source(call: CommandCall) -> Reply:
    sources = call.sources
    if not sources:
        return Reply(prompts.render("source_none", call.variant))
    if not call.argument.isdigit() or not 1 <= int(call.argument) <= len(sources):
        if len(sources) == 1:
            return Reply(prompts.render("source_usage_one", call.variant))
        return Reply(prompts.render("source_usage", call.variant, count=len(sources)))
    passage = sources[int(call.argument) - 1]
    return Reply(f"[{call.argument}] {passage['title']} · {passage['source']}\n{passage['text']}")


def _feedback(call: CommandCall) -> Reply:
    word, _, comment = call.argument.partition(" ")
    rating = RATING_WORDS.get(word.lower())
    if rating is None:
        return Reply(prompts.render("feedback_usage", call.variant))
    # The command itself is the latest message; the answer being rated came before it.
    rated = call.audit is not None and rate_last_answer(
        call.audit, call.thread, call.messages, rating, comment.strip(), call.message_id
    )
    return Reply(prompts.render("feedback_thanks" if rated else "feedback_nothing", call.variant))


COMMANDS: tuple[Command, ...] = (
    Command("/帮助", ("/help",), "/帮助", "查看说明", _help),
    Command("/重置", ("/reset",), "/重置", "清空我们的对话记录", _reset),
    Command("/原文", ("/source",), "/原文 n", "查看上一条回答中第 n 条引用的全文", _source),
    Command("/反馈", ("/feedback",), "/反馈 好|差 [说明]", "评价上一条回答", _feedback),
)
_BY_WORD = {word: c for c in COMMANDS for word in (c.name, *c.aliases)}


def rate_last_answer(
    audit: AuditLog,
    thread: str,
    messages: Sequence[AnyMessage],
    rating: Rating,
    comment: str,
    message_id: str | None = None,
) -> bool:
    """Record a rating of the conversation's last answer; False when there is none yet.

    The one place feedback is recorded: the `/反馈` command and `POST /v1/feedback` both come here.
    """
    exchange = last_exchange(list(messages))
    if exchange is None:
        return False
    question, answer = exchange
    audit.record_feedback(
        thread, rating, comment, question=question, answer=answer, message_id=message_id
    )
    return True


def split_command(text: str) -> tuple[str, str]:
    """The command word as typed (full-width slash folded) and the rest, stripped."""
    word, _, argument = text.replace("／", "/").partition(" ")
    return word, argument.strip()


def find(word: str) -> Command | None:
    return _BY_WORD.get(word.lower())


def help_lines() -> str:
    return "；".join(f"{c.usage} {c.summary}" for c in COMMANDS)


def usage_list() -> str:
    return "、".join(c.usage for c in COMMANDS)


def run(
    text: str,
    *,
    messages: Sequence[AnyMessage],
    sources: Sequence[Passage],
    thread: str,
    message_id: str | None,
    variant: str,
    audit: AuditLog | None,
) -> Reply:
    """The reply to command `text`; an unknown command gets the list of known ones."""
    word, argument = split_command(text)
    command = find(word)
    if command is None:
        return Reply(
            prompts.render("unknown_command", variant, command=word, commands=usage_list())
        )
    call = CommandCall(argument, messages, sources, thread, message_id, variant, audit)
    return command.handler(call)
