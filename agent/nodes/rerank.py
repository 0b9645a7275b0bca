"""rerank: order the candidates by relevance and keep those that clear the threshold."""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

from agent.context import Context
from agent.services import get_services
from agent.state import State
from tools.rerank import select_evidence


async def rerank(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    ctx = runtime.context
    reranker = (await get_services()).reranker(ctx.reranker)
    ranked = await reranker.rerank(state.query, state.candidates)
    evidence = select_evidence(ranked, ctx.rerank_top_n, ctx.relevance_threshold)
    return {"ranked": ranked, "evidence": evidence}
