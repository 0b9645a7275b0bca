"""answer: write the reply from the numbered evidence, searching again through a tool if needed."""

from __future__ import annotations

import logging
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langgraph.runtime import Runtime

from agent import prompts
from agent.context import Context
from agent.evidence import current_question, fenced, format_evidence, recent_history
from agent.extractive import extractive_answer
from agent.models import DEPENDENCY_ERRORS, message_text, usage_counts
from agent.services import Services, get_services
from agent.state import State
from agent.trace import record_call

log = logging.getLogger(__name__)


def _counted(state: State, reply: BaseMessage) -> dict[str, int]:
    """The turn's model calls and tokens, `reply`'s call added: prompt and completion apart,
    as the OpenAI-compatible endpoint reports them."""
    prompt, completion = usage_counts(reply)
    return {
        "model_calls": state.model_calls + 1,
        "tokens": state.tokens + prompt + completion,
        "prompt_tokens": state.prompt_tokens + prompt,
        "completion_tokens": state.completion_tokens + completion,
    }


async def _chitchat(state: State, runtime: Runtime[Context], services: Services) -> dict[str, Any]:
    ctx = runtime.context
    model = await services.chat_model(ctx.chat_model, reasoning=False, temperature=ctx.temperature)
    messages = [
        SystemMessage(content=prompts.render("chitchat", ctx.prompt_variant)),
        *recent_history(state.messages, ctx.history_turns),
        HumanMessage(content=current_question(state.messages)),
    ]
    update: dict[str, Any] = {}
    try:
        reply = await services.call_model(model, messages, ctx, stream=ctx.stream_tokens)
        record_call(runtime, ctx.chat_model, messages, reply)
        text = message_text(reply)
        update |= _counted(state, reply)
    except DEPENDENCY_ERRORS as exc:
        record_call(runtime, ctx.chat_model, messages, error=exc)
        log.warning("chit-chat reply fell back to the canned one: %s", exc)
        text, update["degraded"] = "", True
    text = text or prompts.render("chitchat_fallback", ctx.prompt_variant)
    return update | {"answer": text, "messages": [AIMessage(content=text)]}


async def answer(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    ctx = runtime.context
    services = await get_services()
    if state.intent == "chitchat":
        return await _chitchat(state, runtime, services)

    attempts = state.attempts + 1
    if not state.evidence:
        reply = "knowledge_down" if state.knowledge_error else "not_found"
        draft = prompts.render(reply, ctx.prompt_variant, question=state.question)
        return {"draft": draft, "draft_source": "not_found", "attempts": attempts}

    runnable = await services.answer_model(ctx, with_tools=state.tool_rounds < ctx.max_tool_rounds)
    question = prompts.render(
        "answer_user",
        ctx.prompt_variant,
        evidence=format_evidence(enumerate(state.evidence, start=1)),
        # Fenced like the passages: the user's text must not pass for evidence.
        question=fenced(state.question),
    )
    messages: list[BaseMessage] = [
        SystemMessage(content=prompts.render("answer", ctx.prompt_variant)),
        *recent_history(state.messages, ctx.history_turns),
        HumanMessage(content=question),
        *state.scratch,
    ]
    if state.feedback:
        messages += [
            AIMessage(content=state.draft),
            HumanMessage(
                content=prompts.render("regenerate", ctx.prompt_variant, problems=state.feedback)
            ),
        ]

    try:
        reply = await services.call_model(runnable, messages, ctx, stream=ctx.stream_tokens)
    except DEPENDENCY_ERRORS as exc:
        record_call(runtime, ctx.chat_model, messages, error=exc)
        log.warning("answer fell back to extractive quotes: %s", exc)
        draft = extractive_answer(
            state.query,
            state.evidence,
            ctx.prompt_variant,
            question=state.question,
        )
        return {
            "draft": draft,
            "draft_source": "extractive",
            "degraded": True,
            "attempts": attempts,
        }
    record_call(runtime, ctx.chat_model, messages, reply)
    usage = _counted(state, reply)
    if reply.tool_calls and state.tool_rounds < ctx.max_tool_rounds:
        return usage | {"scratch": [*state.scratch, reply]}
    return usage | {"draft": message_text(reply), "draft_source": "model", "attempts": attempts}
