"""rerank: score the candidates' relevance and keep those that clear the gate as evidence."""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

from agent.context import Context
from agent.services import get_services
from agent.state import State
from tools.base import statistics
from tools.rerank import select_evidence


async def rerank(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    ctx = runtime.context
    services = await get_services()
    knowledge = await services.knowledge_for(ctx.knowledge_bases)
    reranker = services.reranker(ctx.reranker)
    ranked = await reranker.rerank(state.query, state.candidates, statistics(knowledge))
    evidence = select_evidence(
        ranked, ctx.rerank_top_n, ctx.relevance_threshold, ctx.evidence_ratio
    )
    return {"ranked": ranked, "evidence": evidence}
