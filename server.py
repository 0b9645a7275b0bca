"""The HTTP service: QQ front ends post questions here and get cited answers back.

Routes only: authentication, quotas, safety, profiles, audit and metrics live in
`agent.gateway`; the answering itself in the graph (`graphs/qa.py`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import httpx
from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from langchain_core.messages import AIMessage, HumanMessage
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictStr, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from agent import gateway
from agent.checkpoints import Checkpointer, checkpointer_health, open_checkpointer
from agent.evidence import last_exchange
from agent.gateway import Answer, Gateway, Refusal
from agent.models import message_text
from agent.policy.metrics import live_gauges_of_this_process
from agent.policy.tenants import Principal
from agent.services import Services, ensure_default_knowledge, services_from_settings, set_services
from agent.settings import Settings, get_settings
from agent.state import Citation
from agent.threads import one_process_at_a_time
from agent.turns import turn_config
from graphs.qa import build
from tools.maxkb import FALLBACK_NOTE

log = logging.getLogger("qqrag.server")


def _id_text(value: Any) -> Any:
    # OneBot sends numeric ids, the official QQ API opaque strings: accept both.
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


IdText = Annotated[StrictStr, BeforeValidator(_id_text), Field(min_length=1, max_length=128)]


class Speaker(BaseModel):
    """Who is talking, where: this picks the conversation (thread)."""

    model_config = ConfigDict(extra="ignore")

    platform: StrictStr = Field(default="qq", pattern=r"^[A-Za-z0-9_.-]{1,32}$")
    scene: Literal["group", "private"]
    group_id: IdText | None = None
    user_id: IdText
    message_id: IdText | None = None

    @model_validator(mode="after")
    def _group_needs_id(self) -> Speaker:
        if self.scene == "group" and not self.group_id:
            raise ValueError("scene 为 group 时必须提供 group_id")
        return self

    def speaker(self) -> gateway.Speaker:
        return gateway.Speaker(
            platform=self.platform,
            scene=self.scene,
            user_id=self.user_id,
            group_id=self.group_id if self.scene == "group" else None,
            message_id=self.message_id,
        )


class ChatRequest(Speaker):
    text: StrictStr

    @model_validator(mode="after")
    def _text_not_blank(self) -> ChatRequest:
        if not self.text.strip():
            raise ValueError("text 不能为空")
        return self


class FeedbackRequest(Speaker):
    rating: Literal["good", "bad"]
    comment: StrictStr = Field(default="", max_length=500)


class ChatResponse(BaseModel):
    answer: str
    citations: list[Citation]
    intent: str
    thread_id: str
    trace_id: str
    degraded: bool


class HistoryMessage(BaseModel):
    role: Literal["user", "assistant"]
    content: str


class ThreadHistory(BaseModel):
    thread_id: str
    messages: list[HistoryMessage]


class OpenAIMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: StrictStr
    content: StrictStr | list[dict[str, Any]] | None = None


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: StrictStr = "qqrag"
    messages: list[OpenAIMessage] = Field(min_length=1)
    stream: bool = False
    user: StrictStr | None = Field(default=None, max_length=128)


@dataclass
class AppRuntime:
    settings: Settings
    services: Services
    saver: Checkpointer
    gateway: Gateway
    http: httpx.AsyncClient


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings = get_settings()
    async with AsyncExitStack() as stack:
        # Worker processes (QQRAG_WORKERS) start together: creating the tables and filling the
        # default knowledge base go one process at a time, the later ones find them done.
        async with one_process_at_a_time(settings.data_dir / "startup.lock"):
            services = services_from_settings(settings)
            stack.callback(services.close)
            kb = services.embedded[settings.kb_name]
            await asyncio.to_thread(ensure_default_knowledge, kb, settings)
            saver = await stack.enter_async_context(open_checkpointer(settings))
            gate = Gateway.from_settings(settings, services, build(saver))
            stack.callback(gate.close)
        http = await stack.enter_async_context(httpx.AsyncClient(timeout=3.0))
        stack.enter_context(live_gauges_of_this_process())
        set_services(services)
        stack.callback(set_services, None)
        services.on_outage = lambda dependency: gate.metrics.dependency_errors.labels(
            dependency
        ).inc()
        if gate.tenants.is_open():
            log.warning("no API key issued: the service is open to anyone (qqrag key issue …)")
        app.state.runtime = AppRuntime(settings, services, saver, gate, http)
        log.info("qqrag ready: data in %s, Ollama at %s", settings.data_dir, settings.ollama_url)
        yield


# Dependencies are `async def` although they never await: FastAPI runs a plain `def` dependency
# in a worker thread, a hand-off that costs more than the dependency itself.
async def get_runtime(request: Request) -> AppRuntime:
    runtime: AppRuntime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[AppRuntime, Depends(get_runtime)]


async def get_principal(
    rt: RuntimeDep, authorization: Annotated[str | None, Header()] = None
) -> Principal:
    return rt.gateway.authenticate(authorization)


PrincipalDep = Annotated[Principal, Depends(get_principal)]


async def require_admin(principal: PrincipalDep) -> Principal:
    if not principal.is_admin:
        raise Refusal(403, "forbidden", "需要管理员密钥")
    return principal


AdminDep = Annotated[Principal, Depends(require_admin)]


def _error(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, **extra}}, status_code=status)


def _check_length(text: str, settings: Settings) -> None:
    if len(text) > settings.max_text_chars:
        raise HTTPException(422, f"text 超过 {settings.max_text_chars} 字的上限（{len(text)} 字）")


def _response(answer: Answer) -> ChatResponse:
    return ChatResponse(
        answer=answer.answer,
        citations=answer.citations,
        intent=answer.intent,
        thread_id=answer.thread_id,
        trace_id=answer.trace_id,
        degraded=answer.degraded,
    )


def _internal_error(trace: str) -> JSONResponse:
    return _error(500, "internal_error", "服务内部出错了，请稍后再试。", trace_id=trace)


chat = APIRouter(prefix="/v1/chat", tags=["chat"])


@chat.post("", response_model=ChatResponse)
async def post_chat(
    body: ChatRequest, rt: RuntimeDep, principal: PrincipalDep
) -> ChatResponse | JSONResponse:
    _check_length(body.text, rt.settings)
    turn = await rt.gateway.admit(principal, body.speaker(), body.text)
    try:
        answer = await rt.gateway.answer(turn)
    except Refusal:
        raise
    except Exception:
        log.exception("turn failed (trace %s, thread %s)", turn.trace_id, turn.thread)
        return _internal_error(turn.trace_id)
    return _response(answer)


def _sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


@chat.post("/stream")
async def post_chat_stream(
    body: ChatRequest, rt: RuntimeDep, principal: PrincipalDep
) -> StreamingResponse:
    _check_length(body.text, rt.settings)
    turn = await rt.gateway.admit(principal, body.speaker(), body.text)

    async def events() -> AsyncIterator[str]:
        try:
            async for kind, payload in rt.gateway.run(turn, tokens=True):
                if kind == "answer":
                    yield _sse("result", _response(payload).model_dump())
                elif kind == "token":
                    yield _sse("token", {"text": payload})
                else:
                    yield _sse("node", payload)
        except Refusal as refusal:
            yield _sse("error", {"code": refusal.code, "message": refusal.message})
        except Exception:
            log.exception("streamed turn failed (trace %s, thread %s)", turn.trace_id, turn.thread)
            yield _sse(
                "error",
                {
                    "code": "internal_error",
                    "message": "服务内部出错了，请稍后再试。",
                    "trace_id": turn.trace_id,
                },
            )

    headers = {"X-Trace-Id": turn.trace_id, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


threads = APIRouter(prefix="/v1/threads", tags=["threads"])


def _own_thread(rt: AppRuntime, principal: Principal, thread: str) -> None:
    # Someone else's thread is reported as missing: its existence is not ours to reveal.
    if not rt.gateway.may_see(principal, thread):
        raise Refusal(404, "thread_not_found", f"没有找到对话 {thread}")


@threads.get("/{thread}", response_model=ThreadHistory)
async def get_thread(
    thread: str, rt: RuntimeDep, principal: PrincipalDep
) -> ThreadHistory | JSONResponse:
    _own_thread(rt, principal, thread)
    state = await rt.gateway.graph.aget_state(turn_config(thread))
    if not state.values:
        return _error(404, "thread_not_found", f"没有找到对话 {thread}")
    messages = []
    for message in state.values.get("messages", []):
        if isinstance(message, HumanMessage):
            messages.append(HistoryMessage(role="user", content=message_text(message)))
        elif isinstance(message, AIMessage):
            text = rt.gateway.mask(message_text(message))
            messages.append(HistoryMessage(role="assistant", content=text))
    return ThreadHistory(thread_id=thread, messages=messages)


@threads.delete("/{thread}")
async def delete_thread(thread: str, rt: RuntimeDep, principal: PrincipalDep) -> dict[str, Any]:
    _own_thread(rt, principal, thread)
    async with rt.gateway.locks.hold(thread):
        await rt.saver.adelete_thread(thread)
    return {"thread_id": thread, "deleted": True}


feedback = APIRouter(prefix="/v1/feedback", tags=["feedback"])


@feedback.post("", response_model=None)
async def post_feedback(
    body: FeedbackRequest, rt: RuntimeDep, principal: PrincipalDep
) -> dict[str, Any] | JSONResponse:
    thread = rt.gateway.thread_of(principal, body.speaker())
    state = await rt.gateway.graph.aget_state(turn_config(thread))
    exchange = last_exchange(state.values.get("messages", [])) if state.values else None
    if exchange is None or rt.services.audit is None:
        return _error(404, "nothing_to_rate", "还没有可以评价的回答")
    question, answer = exchange
    await asyncio.to_thread(
        rt.services.audit.record_feedback,
        thread,
        body.rating,
        body.comment,
        question=question,
        answer=answer,
        message_id=body.message_id,
    )
    return {"ok": True, "thread_id": thread}


audit = APIRouter(prefix="/v1", tags=["audit"])


@audit.get("/audit")
async def get_audit(
    rt: RuntimeDep,
    principal: PrincipalDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    tenant: str | None = None,
) -> dict[str, Any]:
    """The caller's own turns; an admin may read any tenant's (or all, without `tenant`)."""
    scope = tenant if principal.is_admin else principal.tenant
    rows = (
        await asyncio.to_thread(rt.services.audit.turns, scope, limit=limit)
        if rt.services.audit
        else []
    )
    return {"turns": rows}


@audit.get("/admin/gaps")
async def get_gaps(
    rt: RuntimeDep,
    principal: AdminDep,
    days: Annotated[int, Query(ge=1, le=365)] = 7,
    tenant: str | None = None,
) -> dict[str, Any]:
    """Questions answered with "not found": what the knowledge base is missing."""
    rows = (
        await asyncio.to_thread(rt.services.audit.gaps, tenant, days=days)
        if rt.services.audit
        else []
    )
    return {"days": days, "gaps": rows}


openai = APIRouter(prefix="/v1/chat/completions", tags=["openai"])


def _completion_text(answer: Answer) -> str:
    if not answer.citations:
        return answer.answer
    sources = "\n".join(f"[{c['index']}] {c['source']} · {c['title']}" for c in answer.citations)
    return f"{answer.answer}\n\n来源：\n{sources}"


@openai.post("", response_model=None)
async def post_completions(
    body: CompletionRequest,
    rt: RuntimeDep,
    principal: PrincipalDep,
    x_qqrag_thread: Annotated[str | None, Header(max_length=128)] = None,
) -> JSONResponse | StreamingResponse:
    """OpenAI-compatible chat on the same graph. The conversation lives in the service: only
    the last user message is used; `user` (or the X-QQRAG-Thread header) picks the thread."""
    question = next((m for m in reversed(body.messages) if m.role == "user"), None)
    if question is None or not isinstance(question.content, str) or not question.content.strip():
        raise HTTPException(422, "messages 里需要一条文字内容的 user 消息")
    _check_length(question.content, rt.settings)
    who = x_qqrag_thread or body.user or "anonymous"
    speaker = gateway.Speaker(platform="openai", scene="private", user_id=who)
    turn = await rt.gateway.admit(principal, speaker, question.content)
    created = int(time.time())
    completion_id = f"chatcmpl-{turn.trace_id}"
    model = turn.context.chat_model

    if not body.stream:
        try:
            answer = await rt.gateway.answer(turn)
        except Refusal:
            raise
        except Exception:
            log.exception("completion failed (trace %s)", turn.trace_id)
            return _internal_error(turn.trace_id)
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
                "usage": {
                    "prompt_tokens": 0,
                    "completion_tokens": 0,
                    "total_tokens": answer.tokens,
                },
                "citations": answer.citations,
                "thread_id": answer.thread_id,
            }
        )

    def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
        payload = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

    async def events() -> AsyncIterator[str]:
        yield chunk({"role": "assistant", "content": ""})
        try:
            # The checked answer, not raw model tokens: citation checking may still change it.
            answer = await rt.gateway.answer(turn)
            yield chunk({"content": _completion_text(answer)})
            yield chunk({}, "stop")
        except Refusal as refusal:
            yield chunk({"content": refusal.message})
            yield chunk({}, "stop")
        except Exception:
            log.exception("streamed completion failed (trace %s)", turn.trace_id)
            yield chunk({"content": "服务内部出错了，请稍后再试。"})
            yield chunk({}, "stop")
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


health = APIRouter(tags=["health"])


@health.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@health.get("/metrics")
async def metrics(rt: RuntimeDep) -> Response:
    body, content_type = rt.gateway.metrics.render()
    return Response(body, media_type=content_type)


async def _check_ollama(rt: AppRuntime) -> str | None:
    url = rt.settings.ollama_url
    try:
        response = await rt.http.get(f"{url}/api/tags")
        response.raise_for_status()
        names = {m.get("model") or m.get("name") for m in response.json().get("models", [])}
    except (httpx.HTTPError, ValueError) as exc:
        rt.gateway.metrics.dependency_errors.labels("ollama").inc()
        return f"无法连接 Ollama（{url}）：{exc.__class__.__name__}；回答将使用原文摘录的降级模式"
    wanted = {rt.settings.chat_model, rt.settings.effective_classify_model}
    missing = sorted(m for m in wanted if m not in names and f"{m}:latest" not in names)
    if missing:
        return f"Ollama 上缺少模型 {', '.join(missing)}：请运行 ollama pull {missing[0]}"
    return None


@health.get("/readyz")
async def readyz(rt: RuntimeDep) -> JSONResponse:
    checks: dict[str, dict[str, Any]] = {}
    checkpoints = rt.settings.checkpointer
    problem = await checkpointer_health(rt.saver)
    checks[checkpoints] = {"ok": problem is None, **({"error": problem} if problem else {})}
    problem = await rt.services.knowledge.health()
    checks["knowledge"] = {"ok": problem is None, **({"error": problem} if problem else {})}
    # MaxKB down with the embedded base standing in: answers still come, so degraded, not down.
    knowledge_serves = problem is None or problem.endswith(FALLBACK_NOTE)
    problem = await _check_ollama(rt)
    checks["ollama"] = {"ok": problem is None, **({"error": problem} if problem else {})}
    # Turns go on without Redis (quotas unchecked, locks per process): degraded, not down.
    if (shared := await rt.gateway.shared_state_health()) is not None:
        checks["redis"] = {"ok": shared.ok, **({"error": shared.message} if not shared.ok else {})}

    if not (checks[checkpoints]["ok"] and knowledge_serves):
        return JSONResponse({"status": "down", "checks": checks}, status_code=503)
    status = "ok" if all(check["ok"] for check in checks.values()) else "degraded"
    return JSONResponse({"status": status, "checks": checks})


def create_app() -> FastAPI:
    app = FastAPI(title="qqrag", version="0.1.0", lifespan=lifespan)
    for router in (chat, openai, threads, feedback, audit, health):
        app.include_router(router)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for error in exc.errors():
            where = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
            message = str(error.get("msg", "")).removeprefix("Value error, ")
            problems.append(f"{where}: {message}" if where else message)
        return _error(
            422, "invalid_request", "请求参数有误：" + "；".join(problems), fields=problems
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed", 422: "invalid_request"}
        return _error(exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail))

    @app.exception_handler(Refusal)
    async def refused(request: Request, exc: Refusal) -> JSONResponse:
        response = _error(exc.status, exc.code, exc.message)
        if exc.retry_after is not None:
            response.headers["Retry-After"] = str(exc.retry_after)
        if exc.status == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
        return response

    return app


app = create_app()
