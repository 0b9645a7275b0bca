"""`/v1/chat`: one turn, answered whole or streamed as server-sent events."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, StreamingResponse

from agent.api.deps import PrincipalDep, RuntimeDep, check_length
from agent.api.errors import failure
from agent.api.schemas import ChatRequest, ChatResponse, StreamRequest
from agent.gateway import Refusal

router = APIRouter(prefix="/v1/chat", tags=["chat"])


@router.post("", response_model=ChatResponse)
async def post_chat(
    body: ChatRequest, rt: RuntimeDep, principal: PrincipalDep
) -> ChatResponse | JSONResponse:
    check_length(body.text, rt.settings)
    turn = await rt.gateway.admit(principal, body.speaker(), body.text)
    try:
        answer = await rt.gateway.answer(turn)
    except Refusal:
        raise
    except Exception as exc:
        what = f"turn failed (trace {turn.trace_id}, thread {turn.thread})"
        return failure(exc, what, rt.settings.data_dir).response(trace_id=turn.trace_id)
    return ChatResponse.of(answer)


def _sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


@router.post("/stream")
async def post_chat_stream(
    body: StreamRequest, rt: RuntimeDep, principal: PrincipalDep
) -> StreamingResponse:
    check_length(body.text, rt.settings)
    # A trace shows the prompts and what the model and the knowledge base said before the
    # output gate: for whoever runs the service, not for its users.
    if body.trace and not principal.is_admin:
        raise Refusal(403, "forbidden", "只有管理员密钥可以查看节点跟踪（trace）")
    if body.tenant is not None:
        principal = rt.gateway.acting_as(principal, body.tenant)
    pin = rt.gateway.pinned(principal, body.profile) if body.profile is not None else None
    turn = await rt.gateway.admit(principal, body.speaker(), body.text, pin=pin)
    tenant = turn.principal.tenant

    async def events() -> AsyncIterator[str]:
        try:
            async for kind, payload in rt.gateway.run(turn, tokens=True, trace=body.trace):
                if kind == "answer":
                    yield _sse("result", ChatResponse.of(payload).model_dump())
                elif kind == "token":
                    yield _sse("token", {"text": payload})
                elif body.trace:
                    yield _sse("node", payload)
                else:
                    yield _sse("node", rt.gateway.mask_event(payload, tenant))
        except Refusal as refusal:
            yield _sse("error", {"code": refusal.code, "message": refusal.message})
        except Exception as exc:
            what = f"streamed turn failed (trace {turn.trace_id}, thread {turn.thread})"
            failed = failure(exc, what, rt.settings.data_dir)
            yield _sse("error", failed.body(trace_id=turn.trace_id))

    headers = {"X-Trace-Id": turn.trace_id, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)
