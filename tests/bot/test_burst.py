"""The bot under a burst: one pool of connections to the service, and every message either
answered or told the service is busy, never timed out by the bot itself."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import uvicorn
import websockets
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from uvicorn.protocols.http.h11_impl import H11Protocol

from evals.harness import free_port
from tests.bot.conftest import SELF_ID, BotProcess, group_event, lifecycle_event

if TYPE_CHECKING:
    from bot.plugins.qqrag.client import ServiceClient

ANSWER = "星尘打印机整机保修两年。"
BUSY_MESSAGE = "现在提问的人太多了，请稍后再试。"
ONEBOT_TOKEN = "burst-token"


class AdmittingService:
    """`POST /v1/chat` the way the service's admission answers it: `limit` questions at a time,
    each after `delay` seconds, and a 503 busy at once past that. It counts the TCP connections
    it accepts, the most open at once, and the requests it receives.

    The most open at once is what a client's pool bounds: on a loaded machine the server closes
    a keep-alive connection left idle past its timeout, and the client opens another.
    """

    def __init__(self, *, limit: int, delay: float) -> None:
        self.limit = limit
        self.delay = delay
        self.connections = 0
        self.open = 0
        self.peak = 0
        self.requests = 0
        self._in_flight = 0
        self.url = f"http://127.0.0.1:{free_port()}"
        service = self

        class CountingProtocol(H11Protocol):
            def connection_made(self, transport: Any) -> None:
                service.connections += 1
                service.open += 1
                service.peak = max(service.peak, service.open)
                super().connection_made(transport)

            def connection_lost(self, exc: Exception | None) -> None:
                service.open -= 1
                super().connection_lost(exc)

        self._server = uvicorn.Server(
            uvicorn.Config(
                Starlette(routes=[Route("/v1/chat", self._chat, methods=["POST"])]),
                port=int(self.url.rsplit(":", 1)[1]),
                http=CountingProtocol,
                lifespan="off",
                log_config=None,
                log_level="warning",
                access_log=False,
                timeout_graceful_shutdown=1,
            )
        )
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def __enter__(self) -> AdmittingService:
        self._thread.start()
        while not self._server.started:
            time.sleep(0.01)
        return self

    def __exit__(self, *_: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    async def _chat(self, request: Request) -> JSONResponse:
        # Every handler runs on the server's one event loop: the counts need no lock.
        await request.body()
        self.requests += 1
        if self._in_flight >= self.limit:
            body = {"error": {"code": "busy", "message": BUSY_MESSAGE}}
            return JSONResponse(body, 503, headers={"Retry-After": "5"})
        self._in_flight += 1
        try:
            await asyncio.sleep(self.delay)
        finally:
            self._in_flight -= 1
        answer = {"answer": ANSWER, "citations": [], "intent": "knowledge", "thread_id": "t"}
        return JSONResponse(answer)


@pytest.fixture
def admitting() -> Iterator[AdmittingService]:
    with AdmittingService(limit=1000, delay=0.05) as service:
        yield service


async def _outcome(client: ServiceClient, user: int) -> str:
    """The answer to one question, or the message the bot shows instead."""
    from bot.plugins.qqrag.client import ServiceError, Speaker

    speaker = Speaker(platform="onebot", scene="private", user_id=str(user))
    try:
        return (await client.chat(speaker, "星尘打印机保修多久？")).answer
    except ServiceError as exc:
        return exc.user_message


async def test_calls_share_a_few_keep_alive_connections(admitting: AdmittingService) -> None:
    from bot.plugins.qqrag.client import ServiceClient

    client = ServiceClient(admitting.url, timeout=60, max_connections=4)
    try:
        burst = await asyncio.gather(*(_outcome(client, user) for user in range(40)))
        one_by_one = [await _outcome(client, user) for user in range(10)]
    finally:
        await client.close()

    # The 36 questions that waited for a connection still reached the service.
    assert burst + one_by_one == [ANSWER] * 50
    assert admitting.requests == 50
    # Kept alive and shared: a handful of connections for 50 requests, never more than 4 open.
    assert 1 <= admitting.peak <= 4 and admitting.connections <= 10


async def test_a_question_that_never_got_a_connection_is_busy_not_a_timeout(
    admitting: AdmittingService,
) -> None:
    from bot.plugins.qqrag.client import BUSY, TIMEOUT, ServiceClient

    admitting.delay = 30.0
    client = ServiceClient(admitting.url, timeout=5.0, max_connections=1)
    try:
        first = asyncio.create_task(_outcome(client, 1))
        await asyncio.sleep(0)  # the first question takes the only connection
        client.timeout = 1.0
        second = await _outcome(client, 2)
        outcomes = (await first, second)
    finally:
        await client.close()

    # The first question reached the service, which did not answer in time; the second waited
    # for the connection until its own time ran out and never reached the service.
    assert outcomes == (TIMEOUT, BUSY)
    assert admitting.requests == 1


@pytest.mark.timeout(300)
async def test_a_burst_on_one_onebot_connection_gets_answers_or_busy(tmp_path: Path) -> None:
    """300 questions at once from a NapCat-like client on one reverse WebSocket, to a service
    admitting 4 at a time: each gets one reply, the answer or the service's busy message."""
    from bot.plugins.qqrag.client import TIMEOUT

    count = 300
    with AdmittingService(limit=4, delay=0.2) as service:
        env = {
            "QQRAG_BOT_SERVICE_URL": service.url,
            "QQRAG_BOT_ADAPTERS": "onebot",
            "QQRAG_BOT_TIMEOUT": "120",
            "ONEBOT_ACCESS_TOKEN": ONEBOT_TOKEN,
        }
        with BotProcess(env, cwd=tmp_path) as bot:
            url = f"ws://127.0.0.1:{bot.port}/onebot/v11/ws"
            headers = {"X-Self-ID": str(SELF_ID), "Authorization": f"Bearer {ONEBOT_TOKEN}"}
            async with websockets.connect(url, additional_headers=headers) as ws:
                await ws.send(json.dumps(lifecycle_event()))
                for n in range(count):
                    event = group_event("星尘打印机保修多久？", user_id=50000 + n, message_id=n)
                    await ws.send(json.dumps(event))
                replies = [await _reply(ws) for _ in range(count)]
            log = bot.log()

    assert Counter(message_id for message_id, _ in replies) == Counter(map(str, range(count))), log
    texts = Counter(text for _, text in replies)
    assert TIMEOUT not in texts, log
    assert set(texts) <= {ANSWER, BUSY_MESSAGE}, texts
    assert texts[ANSWER] >= 1
    assert service.requests == count
    assert service.peak <= 32


async def _reply(ws: websockets.ClientConnection) -> tuple[str, str]:
    """`(id of the message replied to, text)` of the bot's next `send_msg`, acknowledged."""
    frame = json.loads(await asyncio.wait_for(ws.recv(), timeout=120))
    await ws.send(
        json.dumps({"status": "ok", "retcode": 0, "data": {"message_id": 1}, "echo": frame["echo"]})
    )
    assert frame["action"] == "send_msg", frame
    segments = frame["params"]["message"]
    [replied] = [s["data"]["id"] for s in segments if s["type"] == "reply"]
    return replied, "".join(s["data"]["text"] for s in segments if s["type"] == "text")
