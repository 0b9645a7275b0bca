"""retrieve: fetch candidate passages for the standalone question."""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

from agent.context import Context
from agent.services import get_services
from agent.state import State


async def retrieve(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    candidates = await get_services().knowledge.search(state.query, runtime.context.top_k)
    return {"candidates": candidates}
