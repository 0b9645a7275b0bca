"""`/v1/threads` (a conversation's history, forgetting it) and `/v1/feedback` on its last answer."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from langchain_core.messages import AIMessage, HumanMessage

from agent.api.deps import AppRuntime, PrincipalDep, RuntimeDep
from agent.api.schemas import FeedbackRequest, HistoryMessage, ThreadHistory, error_response
from agent.commands import rate_last_answer
from agent.gateway import Refusal
from agent.models import message_text
from agent.policy.tenants import Principal
from agent.turns import turn_config

router = APIRouter(prefix="/v1")


def _own_thread(rt: AppRuntime, principal: Principal, thread: str) -> None:
    # Someone else's thread is reported as missing: its existence is not ours to reveal.
    if not rt.gateway.may_see(principal, thread):
        raise Refusal(404, "thread_not_found", f"没有找到对话 {thread}")


@router.get("/threads/{thread}", response_model=ThreadHistory, tags=["threads"])
async def get_thread(
    thread: str, rt: RuntimeDep, principal: PrincipalDep
) -> ThreadHistory | JSONResponse:
    _own_thread(rt, principal, thread)
    state = await rt.gateway.graph.aget_state(turn_config(thread))
    if not state.values:
        return error_response(404, "thread_not_found", f"没有找到对话 {thread}")
    messages = []
    # The thread's tenant, not the reader's: an admin sees what its users saw.
    mask = rt.gateway.masker(thread.split(":", 1)[0])
    for message in state.values.get("messages", []):
        if isinstance(message, HumanMessage):
            messages.append(HistoryMessage(role="user", content=message_text(message)))
        elif isinstance(message, AIMessage):
            messages.append(HistoryMessage(role="assistant", content=mask(message_text(message))))
    return ThreadHistory(thread_id=thread, messages=messages)


@router.delete("/threads/{thread}", tags=["threads"])
async def delete_thread(thread: str, rt: RuntimeDep, principal: PrincipalDep) -> dict[str, Any]:
    _own_thread(rt, principal, thread)
    async with rt.gateway.locks.hold(thread):
        await rt.saver.adelete_thread(thread)
    return {"thread_id": thread, "deleted": True}


@router.post("/feedback", response_model=None, tags=["feedback"])
async def post_feedback(
    body: FeedbackRequest, rt: RuntimeDep, principal: PrincipalDep
) -> dict[str, Any] | JSONResponse:
    thread = rt.gateway.thread_of(principal, body.speaker())
    state = await rt.gateway.graph.aget_state(turn_config(thread))
    messages = state.values.get("messages", []) if state.values else []
    audit = rt.services.audit
    rated = audit is not None and await asyncio.to_thread(
        rate_last_answer, audit, thread, messages, body.rating, body.comment, body.message_id
    )
    if not rated:
        return error_response(404, "nothing_to_rate", "还没有可以评价的回答")
    return {"ok": True, "thread_id": thread}
