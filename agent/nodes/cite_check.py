"""cite_check: keep only what the cited passages support; ask for one regeneration if needed."""

from __future__ import annotations

from typing import Any

from langchain_core.messages import AIMessage
from langgraph.runtime import Runtime

from agent import prompts
from agent.citations import check_citations, renumber
from agent.context import Context
from agent.state import State, Verdict
from tools.base import Passage


def _noted(text: str, state: State, variant: str) -> str:
    """`text`, saying so when its passages come from a stand-in for the configured base."""
    if state.knowledge_error and state.evidence:
        return f"{text}\n{prompts.render('stand_in_notice', variant)}"
    return text


def _final(text: str, evidence: list[Passage], verdict: Verdict | None) -> dict[str, Any]:
    answer, citations = renumber(text, evidence)
    by_id = {p["id"]: p for p in evidence}
    return {
        "answer": answer,
        "citations": citations,
        "sources": [by_id[c["passage_id"]] for c in citations],
        "verdict": verdict,
        "feedback": "",
        "messages": [AIMessage(content=answer)],
    }


async def cite_check(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    ctx = runtime.context
    if state.draft_source != "model":
        # Quotes and the not-found reply are built from the passages themselves.
        return _final(_noted(state.draft, state, ctx.prompt_variant), state.evidence, None)

    # Against the question as the model was asked it, never the search string: terms shared
    # with the question prove nothing, and earlier questions' terms must not be let off too.
    check = check_citations(state.draft, state.evidence, ctx.support_threshold, state.question)
    if check.needs_retry and state.attempts < ctx.max_attempts and not state.degraded:
        return {"feedback": "\n".join(f"- {p}" for p in check.problems), "verdict": check.verdict}

    verdict = check.verdict
    has_support = verdict["supported_ratio"] not in (None, 0.0)
    if not check.text or not (has_support or verdict["refusal"]):
        # Not found in a stand-in's documents says nothing of the configured base's.
        reply = "knowledge_down" if state.knowledge_error else "not_found"
        return _final(
            prompts.render(reply, ctx.prompt_variant, question=state.question),
            state.evidence,
            verdict,
        )
    if verdict["removed"]:
        text = f"{check.text}\n{prompts.render('unverified_notice', ctx.prompt_variant)}"
    else:
        text = check.text
    return _final(_noted(text, state, ctx.prompt_variant), state.evidence, verdict)
