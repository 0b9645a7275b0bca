"""classify: decide the intent and rewrite the question so it stands alone."""

from __future__ import annotations

import logging
import re
from typing import Any, Literal, cast

from langchain_core.messages import HumanMessage, RemoveMessage, SystemMessage
from langgraph.runtime import Runtime
from pydantic import BaseModel, Field

from agent import prompts
from agent.context import Context
from agent.evidence import current_question, history_messages, recent_exchanges
from agent.models import DEPENDENCY_ERRORS, usage_counts
from agent.policy.safety import fold
from agent.services import get_services
from agent.state import TURN_RESET, Intent, State
from agent.trace import record_call
from tools.text import content_tokens, refers_by_word

log = logging.getLogger(__name__)

_GREETING = re.compile(
    r"^(你好|您好|hi|hello|hey|嗨|哈喽|在吗|在不在|早上好|早安|中午好|下午好|晚上好|晚安|"
    r"谢谢|多谢|感谢|谢啦|thx|thanks|thank you|好的|ok|收到|嗯+|哈哈+|你是谁)"
    r"[\s!！~～。.,，?？呀啊呢]*$",
    re.IGNORECASE,
)
_INJECTION = re.compile(
    r"(忽略|无视|忘记|忘掉).{0,8}(之前|以上|上面|前面|所有|全部).{0,8}(指令|说明|提示|规则|设定)"
    r"|ignore\s+(all\s+)?(the\s+)?(previous|above|prior)\s+(instructions|prompts?)"
    r"|(输出|打印|泄露|告诉我).{0,6}(系统提示词|system\s*prompt)",
    re.IGNORECASE,
)


STANDALONE_MIN_TERMS = 4
"""A question with this many topic terms (`topic_terms`) and no referring word is taken to
stand alone."""
_CLASSIFY_ERRORS: tuple[type[BaseException], ...] = (*DEPENDENCY_ERRORS, ValueError)


class Classification(BaseModel):
    """The structured output asked of the classify model."""

    intent: Literal["knowledge", "chitchat", "command", "blocked"] = Field(
        description="knowledge | chitchat | command | blocked"
    )
    standalone_question: str = Field(description="最后一条消息改写成的独立完整问题")


_QUESTION_NOUNS = frozenset("地方 时候 原因 意思".split())
"""Nouns that only spell out the question word (什么地方 = 哪里, 什么时候 = 何时): two questions
that both ask "where" share no topic."""


def topic_terms(text: str) -> set[str]:
    """The words that name what a question is about: whole words (search mode's sub-words
    would make "端口号" three), no stopwords, no single characters (改、用、好 name nothing)."""
    return {
        t
        for t in content_tokens(text, search=False)
        if (len(t) > 1 or t.isascii()) and t not in _QUESTION_NOUNS
    }


def needs_context(text: str) -> bool:
    """Whether a question may lean on the conversation: it refers back, or says too little."""
    return refers_by_word(text) or len(topic_terms(text)) < STANDALONE_MIN_TERMS


def refers_back(question: str, previous: tuple[str, str]) -> bool:
    """Whether `question` continues the previous (question, answer) exchange rather than asking
    about something new, decided without a model.

    It does when it has a referring word; when it names no topic of its own ("怎么改？",
    "多少钱？"); when it is an elliptical "…呢？"; or when, too short to stand alone, it shares a
    topic word with the previous question or answer ("备份好以后怎么恢复？" after a question
    about backups). A short question about a subject the conversation never mentioned
    ("火星的首都是哪里？") is a new topic, and so is one that names the conversation's subject in
    full and asks something new of it ("星尘打印机售价多少？" after a question on its warranty).
    """
    if refers_by_word(question):
        return True
    topics = topic_terms(question)
    if len(topics) >= STANDALONE_MIN_TERMS:
        return False
    if not topics or question.rstrip(" ？?。.!！~～").endswith("呢"):
        return True
    # Sub-words on both sides: "端口号" continues a conversation about "端口".
    said = set(content_tokens(" ".join(previous)))
    shared = {topic for topic in topics if said.intersection(content_tokens(topic))}
    # Naming the conversation's subject again in full, and asking something new of it
    # ("星尘打印机售价多少？" after "星尘打印机保修多久？"), the question needs nothing earlier;
    # gluing the earlier question to its search would rank that question's passage first.
    if len(shared) >= 2 and topics - shared:
        return False
    return bool(shared)


def rule_intent(text: str, has_history: bool) -> Intent | None:
    """The intent when rules are sure, None when the model must decide."""
    if text.startswith(("/", "／")):
        return "command"
    # The form the sensitive-word filter matches (full-width letters folded, invisible
    # characters dropped): a disguise meant for the eye does not get past the rules.
    if _INJECTION.search(fold(text)):
        return "blocked"
    if _GREETING.match(text):
        return "chitchat"
    # A first question has nothing to refer back to, and a complete one needs no rewrite:
    # the model call (and its latency) is spent only where the conversation matters.
    return None if has_history and needs_context(text) else "knowledge"


def history_query(question: str, history: list[tuple[str, str]]) -> str:
    """The search query without a rewrite: the earlier questions this one leans on, then it.

    Earlier questions go back as long as each continues the one before (`refers_back`), so
    that a chain of follow-ups (它… → 那…呢？) still searches for the subject its first question
    named, and a question on a new topic searches for itself alone.
    """
    chain = [question]
    for earlier in reversed(range(len(history))):
        if not refers_back(chain[0], history[earlier]):
            break
        chain.insert(0, history[earlier][0])
    return " ".join(chain)


async def classify(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    ctx = runtime.context
    # First, even when no model is asked: setting up loads the jieba dictionary, which the rules
    # below segment with, so that it never loads on the event loop.
    services = await get_services()
    question = current_question(state.messages)
    # Pairs, not messages: messages are built only for a model call, and building them is
    # a measurable share of a turn that makes none.
    history = recent_exchanges(state.messages, ctx.history_turns)
    update: dict[str, Any] = {**TURN_RESET, "query": question, "question": question}
    # The stored conversation is bounded: older messages only cost checkpoint space and time.
    excess = len(state.messages) - 2 * ctx.keep_turns - 1
    if excess > 0:
        update["messages"] = [RemoveMessage(id=m.id) for m in state.messages[:excess] if m.id]

    intent = rule_intent(question, bool(history))
    ask_model = (intent is None and ctx.rewrite == "model") or (
        ctx.classify_always and intent in (None, "knowledge")
    )
    if ask_model:
        structured = await services.classifier(ctx, Classification)
        messages = [
            SystemMessage(content=prompts.render("classify", ctx.prompt_variant)),
            *history_messages(history),
            HumanMessage(content=question),
        ]
        out: dict[str, Any] | None = None
        try:
            out = cast(dict[str, Any], await services.call_model(structured, messages, ctx))
            # The turn's first model call: its counts start the turn's.
            prompt, completion = usage_counts(out["raw"])
            update |= {
                "model_calls": 1,
                "tokens": prompt + completion,
                "prompt_tokens": prompt,
                "completion_tokens": completion,
            }
            if out["parsing_error"] is not None or out["parsed"] is None:
                raise ValueError(f"unparsable classification: {out['parsing_error']}")
            result: Classification = out["parsed"]
            # "command" without a leading slash is a model mistake; treat it as a question.
            intent = "knowledge" if result.intent == "command" else result.intent
            update["query"] = update["question"] = result.standalone_question.strip() or question
            record_call(runtime, ctx.classify_model, messages, out["raw"])
        except _CLASSIFY_ERRORS as exc:
            # With the reply when there was one: an unparsable reply is what to look at.
            record_call(runtime, ctx.classify_model, messages, out["raw"] if out else None, exc)
            log.warning("classify fell back to rules: %s", exc)
            intent = "knowledge"
            update["query"] = history_query(question, history)
            update["degraded"] = True
    elif intent is None:
        # rewrite="history": the rules have already caught commands, greetings and injections,
        # so what is left is a question. Search carries the subject along; the answer model sees
        # the conversation and resolves the reference itself, saving the classify call.
        intent = "knowledge"
        update["query"] = history_query(question, history)

    update["intent"] = intent
    if intent != "blocked":
        return update
    # Commands go on to the command node; a blocked question is answered here and, like one
    # stopped by a sensitive word, leaves the conversation: no later model or search sees it.
    text = prompts.render("blocked", ctx.prompt_variant)
    asked = state.messages[-1]
    gone = [RemoveMessage(id=asked.id)] if asked.id else []
    return update | {"answer": text, "messages": [*update.get("messages", []), *gone]}
