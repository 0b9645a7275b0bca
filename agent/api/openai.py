"""`/v1/chat/completions` and `/v1/models`: OpenAI-compatible chat on the same gateway and
graph, for clients (Open WebUI, LobeChat, Cherry Studio, NextChat) that list models first."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException
from fastapi.responses import JSONResponse, StreamingResponse

from agent import gateway
from agent.api.deps import PrincipalDep, RuntimeDep, check_length
from agent.api.errors import failure
from agent.api.schemas import CompletionRequest, OpenAIMessage
from agent.gateway import Answer, Refusal
from agent.settings import Settings

router = APIRouter(prefix="/v1", tags=["openai"])
MODEL_ID = "qqrag"
"""The one model clients pick: the knowledge-base agent (its answer model is the service's)."""


SOURCES_HEADING = "\n\n来源：\n"
"""Where a completion's answer ends and its source lines begin."""


def _completion_text(answer: Answer) -> str:
    if not answer.citations:
        return answer.answer
    sources = "\n".join(f"[{c['index']}] {c['source']} · {c['title']}" for c in answer.citations)
    return f"{answer.answer}{SOURCES_HEADING}{sources}"


def _question(messages: list[OpenAIMessage], settings: Settings) -> tuple[int, str]:
    """Where the question is in `messages` (the last user message), and its text."""
    at = next((i for i in reversed(range(len(messages))) if messages[i].role == "user"), None)
    if at is None:
        raise HTTPException(422, "messages 里需要一条文字内容的 user 消息")
    # Answering the words without the picture would answer another question.
    if other := messages[at].other_parts():
        raise HTTPException(
            422, f"qqrag 只能回答文字问题，不支持 {'、'.join(other)} 类型的内容，请用文字提问"
        )
    text = messages[at].text()
    if not text.strip():
        raise HTTPException(422, "messages 里需要一条文字内容的 user 消息")
    check_length(text, settings)
    return at, text


def _carried(messages: list[OpenAIMessage], settings: Settings) -> list[gateway.Said]:
    """The conversation before the question, as the caller sends it back: user and assistant
    text (system prompts, tool results and non-text parts are not qqrag's to follow)."""
    said: list[gateway.Said] = []
    for index, message in enumerate(messages):
        text = message.text()
        if not text.strip():
            continue
        if message.role == "user":
            check_length(text, settings, f"messages[{index}]")
            said.append(("user", text))
        elif message.role == "assistant":
            # A stored conversation keeps the answer without the source lines sent with it.
            said.append(("assistant", text.split(SOURCES_HEADING, 1)[0]))
    return said


def _usage(answer: Answer | None) -> dict[str, int]:
    """OpenAI's usage object: the tokens of every model call of the turn (none for a refusal)."""
    prompt = answer.result.prompt_tokens if answer else 0
    completion = answer.result.completion_tokens if answer else 0
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


@router.get("/models")
async def list_models(principal: PrincipalDep) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [{"id": MODEL_ID, "object": "model", "created": 0, "owned_by": "qqrag"}],
    }


@router.post("/chat/completions", response_model=None)
async def post_completions(
    body: CompletionRequest,
    rt: RuntimeDep,
    principal: PrincipalDep,
    x_qqrag_thread: Annotated[str | None, Header(max_length=128)] = None,
) -> JSONResponse | StreamingResponse:
    """OpenAI-compatible chat on the same graph. The conversation is what `messages` says, and
    nothing of it is stored; a caller that names a thread (the X-QQRAG-Thread header, or `user`)
    gets a stored one instead, whose history is the service's: only the question is read then.
    """
    at, question = _question(body.messages, rt.settings)
    named = x_qqrag_thread or body.user
    history = None if named else _carried(body.messages[:at], rt.settings)
    # Unnamed callers share a quota, as one client of the tenant, but no conversation.
    speaker = gateway.Speaker(platform="openai", scene="private", user_id=named or "anonymous")
    turn = await rt.gateway.admit(principal, speaker, question, history=history)
    created = int(time.time())
    completion_id = f"chatcmpl-{turn.trace_id}"
    model = turn.context.chat_model

    if not body.stream:
        try:
            answer = await rt.gateway.answer(turn)
        except Refusal:
            raise
        except Exception as exc:
            what = f"completion failed (trace {turn.trace_id})"
            return failure(exc, what, rt.settings.data_dir).response(trace_id=turn.trace_id)
        return JSONResponse(
            {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": _completion_text(answer)},
                        "finish_reason": "stop",
                    }
                ],
                "usage": _usage(answer),
                "citations": answer.citations,
                # A thread deleted once answered is none to look up.
                "thread_id": answer.thread_id if named else None,
            }
        )

    include_usage = body.stream_options is not None and body.stream_options.include_usage

    def chunk(**fields: Any) -> str:
        payload = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            **fields,
        }
        return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

    def choice(delta: dict[str, Any], finish: str | None = None) -> str:
        # As OpenAI's: with include_usage every chunk has the field, null but in the last one.
        usage = {"usage": None} if include_usage else {}
        return chunk(choices=[{"index": 0, "delta": delta, "finish_reason": finish}], **usage)

    async def events() -> AsyncIterator[str]:
        yield choice({"role": "assistant", "content": ""})
        answer: Answer | None = None
        try:
            # The checked answer, not raw model tokens: citation checking may still change it.
            answer = await rt.gateway.answer(turn)
            yield choice({"content": _completion_text(answer)})
        except Refusal as refusal:
            yield choice({"content": refusal.message})
        except Exception as exc:
            what = f"streamed completion failed (trace {turn.trace_id})"
            yield choice({"content": failure(exc, what, rt.settings.data_dir).message})
        yield choice({}, "stop")
        if include_usage:
            yield chunk(choices=[], usage=_usage(answer))
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")
