"""NoneBot under nonebug for the plugin tests, a scripted qqrag service, and real bot processes.

nonebug's pytest plugin is active for the whole suite: it initialises NoneBot once per session
(harmless elsewhere). The lifespan stays off, so the order in which folders run does not
matter: matcher tests need no startup hooks, and the end-to-end tests run the bot for real.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nonebot
import pytest
import uvicorn
from nonebot.adapters.onebot.v11 import Adapter as OneBotAdapter
from nonebot.adapters.onebot.v11 import GroupMessageEvent, Message, PrivateMessageEvent
from nonebot.adapters.qq import Adapter as QQAdapter
from nonebot.adapters.qq import C2CMessageCreateEvent, GroupAtMessageCreateEvent
from nonebug import NONEBOT_INIT_KWARGS, NONEBOT_START_LIFESPAN
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from evals.fakes import qq as fake_qq
from evals.harness import ChildProcess, free_port

SELF_ID = 10001
GROUP_ID = 20002
USER_ID = 30003
ONEBOT_TOKEN = "onebot-test-token"
SERVICE_PORT = free_port()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[NONEBOT_INIT_KWARGS] = {
        "driver": "~fastapi+~httpx+~websockets",
        "onebot_access_token": ONEBOT_TOKEN,
        "qq_bots": [
            {"id": fake_qq.APP_ID, "secret": fake_qq.SECRET, "use_websocket": False},
        ],
        "qqrag_bot_service_url": f"http://127.0.0.1:{SERVICE_PORT}",
        "qqrag_bot_api_key": "service-key",
        "qqrag_bot_timeout": 5.0,
        "qqrag_bot_nicknames": ["小知"],
        "qqrag_bot_max_chars": 100,
        "qqrag_bot_forward_threshold": 150,
    }
    config.stash[NONEBOT_START_LIFESPAN] = False


@pytest.fixture(scope="session", autouse=True)
def after_nonebot_init(after_nonebot_init: None) -> None:
    driver = nonebot.get_driver()
    driver.register_adapter(OneBotAdapter)
    driver.register_adapter(QQAdapter)
    nonebot.load_plugin("bot.plugins.qqrag")


# --------------------------------------------------------------------------- the scripted service


@dataclass
class Scripted:
    status: int = 200
    body: Any = None
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


class FakeService:
    """`POST /v1/chat` and `/v1/feedback` answered from a script; requests are recorded."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.requests: list[tuple[str, dict[str, Any], dict[str, str]]] = []
        self._script: deque[Scripted] = deque()
        self._server = uvicorn.Server(
            uvicorn.Config(
                Starlette(routes=[Route("/v1/{name}", self._answer, methods=["POST"])]),
                port=port,
                lifespan="off",
                log_config=None,
                log_level="warning",
                timeout_graceful_shutdown=1,
            )
        )
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def start(self) -> None:
        self._thread.start()
        while not self._server.started:
            time.sleep(0.01)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=5)

    def reset(self) -> None:
        self.requests.clear()
        self._script.clear()

    def answer(
        self,
        text: str,
        citations: list[dict[str, Any]] | None = None,
        *,
        delay: float = 0.0,
        **fields: Any,
    ) -> None:
        body = {
            "answer": text,
            "citations": citations or [],
            "intent": "knowledge",
            "thread_id": "t",
            "trace_id": "0123456789abcdef",
            "degraded": False,
        }
        self._script.append(Scripted(body=body | fields, delay=delay))

    def fail(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        body = {"error": {"code": code, "message": message}}
        self._script.append(Scripted(status=status, body=body, headers=headers or {}))

    def send(self, body: Any) -> None:
        self._script.append(Scripted(body=body))

    async def _answer(self, request: Request) -> Response:
        self.requests.append(
            (request.url.path, json.loads(await request.body()), dict(request.headers))
        )
        if not self._script:
            return JSONResponse({"error": {"code": "unscripted", "message": "?"}}, 500)
        scripted = self._script.popleft()
        await asyncio.sleep(scripted.delay)
        return JSONResponse(scripted.body, scripted.status, headers=scripted.headers)


@pytest.fixture(scope="session")
def _service_process() -> Iterator[FakeService]:
    service = FakeService(SERVICE_PORT)
    service.start()
    yield service
    service.stop()


@pytest.fixture
def service(_service_process: FakeService) -> Iterator[FakeService]:
    _service_process.reset()
    yield _service_process
    _service_process.reset()


# --------------------------------------------------------------------------- post-processed events
# nonebug skips Bot.handle_event: events arrive as the adapters leave them, `to_me` set and the
# leading @ of the bot removed.


def onebot_group_event(
    message: str | Message, *, to_me: bool = True, message_id: int = 42
) -> GroupMessageEvent:
    message = Message(message) if isinstance(message, str) else message
    return GroupMessageEvent(
        time=int(time.time()),
        self_id=SELF_ID,
        post_type="message",
        sub_type="normal",
        user_id=USER_ID,
        message_type="group",
        group_id=GROUP_ID,
        message_id=message_id,
        message=message,
        original_message=message,
        raw_message=str(message),
        font=0,
        sender={"user_id": USER_ID, "nickname": "u", "card": "", "role": "member"},
        to_me=to_me,
    )


def onebot_private_event(text: str, *, message_id: int = 43) -> PrivateMessageEvent:
    return PrivateMessageEvent(
        time=int(time.time()),
        self_id=SELF_ID,
        post_type="message",
        sub_type="friend",
        user_id=USER_ID,
        message_type="private",
        message_id=message_id,
        message=Message(text),
        original_message=Message(text),
        raw_message=text,
        font=0,
        sender={"user_id": USER_ID, "nickname": "u"},
        to_me=True,
    )


def qq_group_event(content: str, *, message_id: str = "ROBOT1.0_msg1") -> GroupAtMessageCreateEvent:
    payload = fake_qq.group_at_message(
        content, message_id=message_id, group_openid="G1", member_openid="U1"
    )
    return GroupAtMessageCreateEvent.model_validate({"event_id": payload["id"], **payload["d"]})


def qq_c2c_event(content: str, *, message_id: str = "ROBOT1.0_c2c1") -> C2CMessageCreateEvent:
    payload = fake_qq.c2c_message(content, message_id=message_id, user_openid="U1")
    return C2CMessageCreateEvent.model_validate({"event_id": payload["id"], **payload["d"]})


# --------------------------------------------------------------------------- a real bot process


def group_event(text: str, *, user_id: int = USER_ID, message_id: int = 42) -> dict[str, Any]:
    """A group message that @-mentions the bot, as NapCat reports it."""
    return {
        "time": int(time.time()),
        "self_id": SELF_ID,
        "post_type": "message",
        "message_type": "group",
        "sub_type": "normal",
        "message_id": message_id,
        "group_id": GROUP_ID,
        "user_id": user_id,
        "anonymous": None,
        "font": 0,
        "raw_message": f"[CQ:at,qq={SELF_ID}] {text}",
        "message": [
            {"type": "at", "data": {"qq": str(SELF_ID)}},
            {"type": "text", "data": {"text": f" {text}"}},
        ],
        "sender": {"user_id": user_id, "nickname": "u", "card": "", "role": "member"},
    }


def lifecycle_event() -> dict[str, Any]:
    return {
        "time": int(time.time()),
        "self_id": SELF_ID,
        "post_type": "meta_event",
        "meta_event_type": "lifecycle",
        "sub_type": "connect",
    }


class BotProcess(ChildProcess):
    """`python -m bot` in a child process, configured through environment variables only."""

    label = "bot"

    def __init__(self, env: dict[str, str], *, cwd: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        inherited = {
            name: value
            for name, value in os.environ.items()
            if not name.upper().startswith(("QQRAG_", "QQ_", "ONEBOT_"))
            and name.upper() not in {"HOST", "PORT", "DRIVER", "ENVIRONMENT"}
        }
        super().__init__(
            [sys.executable, "-m", "bot"],
            {**inherited, **env, "HOST": "127.0.0.1", "PORT": str(self.port)},
            cwd=cwd,
            log_path=cwd / f"bot-{self.port}.log",
        )

    def ready(self) -> bool:
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", self.port)) == 0
