"""retrieve: fetch candidate passages for the standalone question."""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

from agent.context import Context
from agent.services import get_services
from agent.state import State


async def retrieve(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    ctx = runtime.context
    knowledge = get_services().knowledge_for(ctx.knowledge_bases)
    candidates = await knowledge.search(state.query, ctx.top_k)
    return {"candidates": candidates}
