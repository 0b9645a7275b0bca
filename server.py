"""The HTTP service: QQ front ends post questions here and get cited answers back."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import httpx
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictStr, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from agent.context import Context
from agent.evidence import last_exchange
from agent.models import message_text
from agent.services import Services, ensure_default_knowledge, services_from_settings, set_services
from agent.settings import Settings, get_settings
from agent.state import Citation
from agent.threads import KeyedLocks, thread_id
from agent.turns import QAGraph, TurnResult, run_turn, stream_turn, turn_config
from graphs.qa import build

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


@dataclass
class AppRuntime:
    settings: Settings
    services: Services
    saver: AsyncSqliteSaver
    graph: QAGraph
    locks: KeyedLocks
    http: httpx.AsyncClient


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings = get_settings()
    services = services_from_settings(settings)
    kb = services.embedded[settings.kb_name]
    await asyncio.to_thread(ensure_default_knowledge, kb, settings)
    async with (
        AsyncSqliteSaver.from_conn_string(str(settings.checkpoint_path)) as saver,
        httpx.AsyncClient(timeout=3.0) as http,
    ):
        set_services(services)
        app.state.runtime = AppRuntime(
            settings=settings,
            services=services,
            saver=saver,
            graph=build(saver),
            locks=KeyedLocks(),
            http=http,
        )
        log.info("qqrag ready: data in %s, Ollama at %s", settings.data_dir, settings.ollama_url)
        try:
            yield
        finally:
            set_services(None)
            services.close()


def get_runtime(request: Request) -> AppRuntime:
    runtime: AppRuntime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[AppRuntime, Depends(get_runtime)]


def _error(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, **extra}}, status_code=status)


def _thread_of(body: Speaker, settings: Settings) -> str:
    return thread_id(
        body.platform, body.scene, body.user_id, body.group_id, settings.group_thread_scope
    )


def _check_length(body: ChatRequest, settings: Settings) -> None:
    if len(body.text) > settings.max_text_chars:
        raise HTTPException(
            422, f"text 超过 {settings.max_text_chars} 字的上限（{len(body.text)} 字）"
        )


def _response(result: TurnResult, thread: str, trace: str) -> ChatResponse:
    return ChatResponse(
        answer=result.answer,
        citations=result.citations,
        intent=result.intent,
        thread_id=thread,
        trace_id=trace,
        degraded=result.degraded,
    )


chat = APIRouter(prefix="/v1/chat", tags=["chat"])


@chat.post("", response_model=ChatResponse)
async def post_chat(body: ChatRequest, rt: RuntimeDep) -> ChatResponse | JSONResponse:
    _check_length(body, rt.settings)
    thread, trace = _thread_of(body, rt.settings), uuid.uuid4().hex[:16]
    try:
        async with rt.locks.hold(thread):
            result = await run_turn(
                rt.graph, thread, body.text, Context(), message_id=body.message_id, trace_id=trace
            )
    except Exception:
        log.exception("turn failed (trace %s, thread %s)", trace, thread)
        return _error(500, "internal_error", "服务内部出错了，请稍后再试。", trace_id=trace)
    return _response(result, thread, trace)


def _sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


@chat.post("/stream")
async def post_chat_stream(body: ChatRequest, rt: RuntimeDep) -> StreamingResponse:
    _check_length(body, rt.settings)
    thread, trace = _thread_of(body, rt.settings), uuid.uuid4().hex[:16]

    async def events() -> AsyncIterator[str]:
        try:
            async with rt.locks.hold(thread):
                async for kind, payload in stream_turn(
                    rt.graph,
                    thread,
                    body.text,
                    Context(),
                    message_id=body.message_id,
                    trace_id=trace,
                ):
                    if kind == "result":
                        yield _sse("result", _response(payload, thread, trace).model_dump())
                    elif kind == "token":
                        yield _sse("token", {"text": payload})
                    else:
                        yield _sse("node", payload)
        except Exception:
            log.exception("streamed turn failed (trace %s, thread %s)", trace, thread)
            yield _sse(
                "error",
                {
                    "code": "internal_error",
                    "message": "服务内部出错了，请稍后再试。",
                    "trace_id": trace,
                },
            )

    headers = {"X-Trace-Id": trace, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


threads = APIRouter(prefix="/v1/threads", tags=["threads"])


@threads.get("/{thread}", response_model=ThreadHistory)
async def get_thread(thread: str, rt: RuntimeDep) -> ThreadHistory | JSONResponse:
    state = await rt.graph.aget_state(turn_config(thread))
    if not state.values:
        return _error(404, "thread_not_found", f"没有找到对话 {thread}")
    messages = []
    for message in state.values.get("messages", []):
        if isinstance(message, HumanMessage):
            messages.append(HistoryMessage(role="user", content=message_text(message)))
        elif isinstance(message, AIMessage):
            messages.append(HistoryMessage(role="assistant", content=message_text(message)))
    return ThreadHistory(thread_id=thread, messages=messages)


@threads.delete("/{thread}")
async def delete_thread(thread: str, rt: RuntimeDep) -> dict[str, Any]:
    async with rt.locks.hold(thread):
        await rt.saver.adelete_thread(thread)
    return {"thread_id": thread, "deleted": True}


feedback = APIRouter(prefix="/v1/feedback", tags=["feedback"])


@feedback.post("", response_model=None)
async def post_feedback(body: FeedbackRequest, rt: RuntimeDep) -> dict[str, Any] | JSONResponse:
    thread = _thread_of(body, rt.settings)
    state = await rt.graph.aget_state(turn_config(thread))
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


health = APIRouter(tags=["health"])


@health.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


async def _check_ollama(rt: AppRuntime) -> str | None:
    url = rt.settings.ollama_url
    try:
        response = await rt.http.get(f"{url}/api/tags")
        response.raise_for_status()
        names = {m.get("model") or m.get("name") for m in response.json().get("models", [])}
    except (httpx.HTTPError, ValueError) as exc:
        return f"无法连接 Ollama（{url}）：{exc.__class__.__name__}；回答将使用原文摘录的降级模式"
    wanted = {rt.settings.chat_model, rt.settings.effective_classify_model}
    missing = sorted(m for m in wanted if m not in names and f"{m}:latest" not in names)
    if missing:
        return f"Ollama 上缺少模型 {', '.join(missing)}：请运行 ollama pull {missing[0]}"
    return None


@health.get("/readyz")
async def readyz(rt: RuntimeDep) -> JSONResponse:
    checks: dict[str, dict[str, Any]] = {}
    try:
        async with rt.saver.conn.execute("SELECT 1") as cursor:
            await cursor.fetchone()
        checks["sqlite"] = {"ok": True}
    except Exception as exc:
        checks["sqlite"] = {"ok": False, "error": f"检查点数据库不可用：{exc}"}
    problem = await rt.services.knowledge.health()
    checks["knowledge"] = {"ok": problem is None, **({"error": problem} if problem else {})}
    problem = await _check_ollama(rt)
    checks["ollama"] = {"ok": problem is None, **({"error": problem} if problem else {})}

    if not (checks["sqlite"]["ok"] and checks["knowledge"]["ok"]):
        return JSONResponse({"status": "down", "checks": checks}, status_code=503)
    status = "ok" if checks["ollama"]["ok"] else "degraded"
    return JSONResponse({"status": status, "checks": checks})


def create_app() -> FastAPI:
    app = FastAPI(title="qqrag", version="0.1.0", lifespan=lifespan)
    app.include_router(chat)
    app.include_router(threads)
    app.include_router(feedback)
    app.include_router(health)

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

    return app


app = create_app()
