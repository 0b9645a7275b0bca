"""The HTTP service: QQ front ends post questions here and get cited answers back.

The app, its lifespan and its error handlers; the routes live in `agent.api`, grouped by
resource. Authentication, quotas, safety, profiles, audit and metrics live in `agent.gateway`;
the answering itself in the graph (`graphs/qa.py`).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from http import HTTPStatus

import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException

from agent import console
from agent.api import (
    admin,
    chat,
    documents,
    governance,
    health,
    kb,
    me,
    openai,
    profiles,
    stats,
    threads,
)
from agent.api.deps import AppRuntime
from agent.api.errors import INTERNAL, storage_failure
from agent.api.schemas import error_response
from agent.gateway import Refusal
from agent.policy.metrics import live_gauges_of_this_process
from agent.runtime import open_runtime
from agent.settings import get_settings
from agent.validation import request_problem
from graphs.qa import build

log = logging.getLogger("qqrag.server")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings = get_settings()
    async with AsyncExitStack() as stack:
        runtime = await stack.enter_async_context(open_runtime(settings, build))
        http = await stack.enter_async_context(httpx.AsyncClient(timeout=3.0))
        stack.enter_context(live_gauges_of_this_process())
        if runtime.gateway.tenants.is_open():
            log.warning("no API key issued: the service is open to anyone (qqrag key issue …)")
        app.state.runtime = AppRuntime(
            settings, runtime.services, runtime.saver, runtime.gateway, http
        )
        log.info("qqrag ready: data in %s, Ollama at %s", settings.data_dir, settings.ollama_url)
        yield


def create_app() -> FastAPI:
    # /docs and /redoc with Swagger UI's and ReDoc's files served from here, not from a CDN:
    # the service often runs where nothing outside can be reached.
    app = FastAPIOffline(title="qqrag", version="0.1.0", lifespan=lifespan)
    for routes in (
        chat,
        openai,
        threads,
        admin,
        stats,
        me,
        profiles,
        documents,
        kb,
        governance,
        health,
    ):
        app.include_router(routes.router)
    console.install(app)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [request_problem(error) for error in exc.errors()]
        message = "请求参数有误：" + "；".join(p["message"] for p in problems)
        return error_response(422, "invalid_request", message, fields=problems)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed", 422: "invalid_request"}
        # Starlette's own details are the English status phrases; ours are Chinese already.
        plain = {
            404: f"没有这个接口：{request.url.path}",
            405: f"{request.url.path} 不接受 {request.method} 请求",
        }
        message = str(exc.detail)
        if message == HTTPStatus(exc.status_code).phrase:
            message = plain.get(exc.status_code, f"请求出错（HTTP {exc.status_code}）")
        return error_response(exc.status_code, codes.get(exc.status_code, "http_error"), message)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Starlette re-raises after answering, so the traceback still reaches the log.
        return INTERNAL.response()

    # The errors a full disk raises, outside the turns (feedback, keys, forgetting a thread):
    # answered here, where Starlette does not re-raise, so the log gets one line.
    @app.exception_handler(sqlite3.OperationalError)
    @app.exception_handler(OSError)
    async def storage_error(request: Request, exc: Exception) -> JSONResponse:
        rt: AppRuntime = request.app.state.runtime
        what = f"{request.method} {request.url.path} failed"
        if (failed := storage_failure(exc, what, rt.settings.data_dir)) is None:
            raise exc  # to the catch-all above: a 500, and the traceback in the log
        return failed.response()

    @app.exception_handler(Refusal)
    async def refused(request: Request, exc: Refusal) -> JSONResponse:
        response = error_response(exc.status, exc.code, exc.message)
        if exc.retry_after is not None:
            response.headers["Retry-After"] = str(exc.retry_after)
        if exc.status == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
        return response

    return app


app = create_app()
