"""The part every fake server shares: a Starlette app served by uvicorn in a daemon thread."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Generic, Self, TypeVar

import uvicorn
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp

from evals.harness import Started

NOT_JSON = object()
"""What `json_body` returns for a body that is not JSON: each fake answers it its own way."""
_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]


async def json_body(request: Request) -> Any:
    """The request's JSON body: None when empty, `NOT_JSON` when it does not parse."""
    raw = await request.body()
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return NOT_JSON


def catch_all(dispatch: Callable[[Request], Awaitable[Response]]) -> Starlette:
    """An app sending every path and method to `dispatch`: a fake routes the way its real
    server does, 404 and 405 bodies included, rather than the way Starlette would. A client
    gone before its body arrived (a service killed mid-request) is no error of the fake's."""

    async def quietly(request: Request) -> Response:
        try:
            return await dispatch(request)
        except ClientDisconnect:
            return Response(status_code=499)

    return Starlette(routes=[Route("/{path:path}", quietly, methods=_ALL_METHODS)])


def command_line(prog: str, description: str, port: int) -> argparse.ArgumentParser:
    """The options every fake run by hand takes: where it listens."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=port)
    return parser


def serve_forever(app: ASGIApp, host: str, port: int) -> None:
    """Serve a fake in the foreground, for trying the product by hand."""
    uvicorn.run(app, host=host, port=port, lifespan="off", timeout_graceful_shutdown=1)


class ThreadedServer(Started):
    """Start/stop a fake on 127.0.0.1 from synchronous test code; use it as a context manager.

    A stopped fake restarts on the same port, so a client configured with its URL reconnects.
    """

    label = "fake server"

    def __init__(self, port: int = 0) -> None:
        self.url = ""
        self._port = port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        # Created by the server's loop on its first delay; stop() sets it from another thread.
        self._stop_signal: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None

    def create_app(self) -> ASGIApp:
        raise NotImplementedError

    def base_url(self, port: int) -> str:
        return f"http://127.0.0.1:{port}"

    def start(self) -> Self:
        """Serve on 127.0.0.1 (a free port unless one was given); return once it accepts."""
        if self._thread is not None:
            raise RuntimeError(f"this {self.label} is already running")
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self._port))
        port = listener.getsockname()[1]
        config = uvicorn.Config(
            self.create_app(),
            lifespan="off",
            log_level="warning",
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=1,
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(
            target=server.run,
            kwargs={"sockets": [listener]},
            name=f"{self.label.replace(' ', '-')}-{port}",
            daemon=True,
        )
        self._server, self._thread = server, thread
        self._stop_signal = None
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                listener.close()
                raise RuntimeError(f"the {self.label} did not start on port {port}")
            time.sleep(0.005)
        self._port = port
        self.url = self.base_url(port)
        return self

    def stop(self) -> None:
        """Stop serving (clients then get connection refused); cuts short any delay asleep."""
        if self._server is None or self._thread is None:
            return
        if self._stop_signal is not None:
            loop, stopping = self._stop_signal
            loop.call_soon_threadsafe(stopping.set)
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._server = None
        self._thread = None

    async def sleep(self, seconds: float) -> None:
        """Sleep on the server's loop, waking early when :meth:`stop` is called."""
        if seconds <= 0:
            return
        if self._stop_signal is None:
            self._stop_signal = (asyncio.get_running_loop(), asyncio.Event())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop_signal[1].wait(), seconds)


F = TypeVar("F")


class ScriptedServer(ThreadedServer, Generic[F]):
    """A fake that records its requests in `requests` and fails on cue: faults queued by
    `fail_next` meet the next requests, in call order."""

    def __init__(self, port: int = 0) -> None:
        super().__init__(port)
        self.requests: list[dict[str, Any]] = []
        self._faults: deque[F] = deque()
        self._lock = threading.Lock()

    def fail_next(self, fault: F, times: int = 1) -> None:
        """Make the next ``times`` requests that can fail fail with ``fault``."""
        with self._lock:
            self._faults.extend([fault] * times)

    def reset(self) -> None:
        """Forget queued faults and recorded requests."""
        with self._lock:
            self._faults.clear()
            self.requests.clear()

    def _take_fault(self) -> F | None:
        with self._lock:
            return self._faults.popleft() if self._faults else None
