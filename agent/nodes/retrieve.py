"""retrieve: fetch candidate passages for the standalone question."""

from __future__ import annotations

import logging
from typing import Any

from langgraph.runtime import Runtime

from agent.context import Context
from agent.services import get_services
from agent.state import State
from tools.base import KnowledgeUnavailable, stand_in

log = logging.getLogger(__name__)


async def retrieve(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    ctx = runtime.context
    knowledge = await (await get_services()).knowledge_for(ctx.knowledge_bases)
    try:
        candidates = await knowledge.search(state.query, ctx.top_k)
    except KnowledgeUnavailable as exc:
        # The user is told the knowledge base is unreachable, not that it lacks an answer.
        log.warning("knowledge search failed: %s", exc)
        return {"candidates": [], "degraded": True, "knowledge_error": str(exc)}
    if reason := stand_in(candidates):
        # A fallback's documents are not the configured ones: its answer is degraded, and
        # what it lacks is no gap of the configured base.
        return {"candidates": list(candidates), "degraded": True, "knowledge_error": reason}
    return {"candidates": candidates}
