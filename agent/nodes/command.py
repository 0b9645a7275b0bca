"""command: answer a chat command from the registry (`agent.commands`); no model involved."""

from __future__ import annotations

from typing import Any

from langchain_core.messages import AIMessage, RemoveMessage
from langgraph.config import get_config
from langgraph.graph.message import REMOVE_ALL_MESSAGES
from langgraph.runtime import Runtime

from agent import commands
from agent.context import Context
from agent.services import get_services
from agent.state import State


async def command(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    latest = state.messages[-1]
    message_id = latest.additional_kwargs.get("message_id")
    services = await get_services()
    thread = str(get_config()["configurable"].get("thread_id", ""))
    # /反馈 writes a row to the audit log.
    reply = await services.run_io(
        lambda: commands.run(
            state.question,
            messages=state.messages,
            sources=state.sources,
            thread=thread,
            message_id=str(message_id) if message_id else None,
            variant=runtime.context.prompt_variant,
            audit=services.audit,
        )
    )
    if reply.reset:
        return {
            "answer": reply.text,
            "messages": [RemoveMessage(id=REMOVE_ALL_MESSAGES)],
            "sources": [],
        }
    return {"answer": reply.text, "messages": [AIMessage(content=reply.text)]}
