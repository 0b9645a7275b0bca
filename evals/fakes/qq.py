"""A fake official QQ bot API (api.bot.qq.com) on 127.0.0.1, and signed webhook deliveries.

Enough of the OpenAPI for a webhook bot built on ``nonebot-adapter-qq`` to answer group and
C2C messages: point ``QQ_API_BASE`` at :attr:`FakeQQ.url` and ``QQ_AUTH_BASE`` at
:attr:`FakeQQ.auth_url`. It checks what the real API checks and answers its errors, as seen
in reports from the field (HTTP 400 with ``{"message", "code", "err_code", "trace_id"}``):

- ``POST /app/getAppAccessToken`` ``{"appId", "clientSecret"}`` -> ``{"access_token",
  "expires_in": "7200"}`` (a string, as the real API sends it); a wrong pair -> code 100016.
- ``GET /users/@me`` -> the bot's user (the adapter asks on its first webhook delivery).
- ``POST /v2/groups/{group_openid}/messages`` and ``POST /v2/users/{openid}/messages``:
  need ``Authorization: QQBot <token>`` (else 401, code 11244); refuse text that holds a link
  (40054010), a repeated ``msg_id`` + ``msg_seq`` (40054005) and a sixth passive reply to one
  message (22009); answer ``{"id", "timestamp"}``.

The webhook side: :func:`webhook_delivery` signs a payload the way QQ does (Ed25519 over
timestamp + body, the key seeded with the bot secret repeated to 32 bytes);
:func:`group_at_message` and :func:`c2c_message` build the dispatch payloads.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from evals.fakes._server import ThreadedServer

APP_ID = "102000001"
SECRET = "fake-qq-bot-secret"
BOT_USER_ID = "11400000000000000001"
BOT_NAME = "知识库助手-测试中"
MAX_PASSIVE_REPLIES = 5

_CHINA = timezone(timedelta(hours=8))
_LINK_RE = re.compile(
    r"(?:https?|ftp)://|(?<![A-Za-z0-9-])(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,24}(?![A-Za-z0-9-])",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class SentMessage:
    """One message the bot posted: ``scene`` is "group" or "c2c", ``target`` the openid."""

    scene: str
    target: str
    body: dict[str, Any]
    headers: dict[str, str]


class FakeQQ(ThreadedServer):
    """The fake API in a background thread; use it as a context manager or start()/stop()."""

    label = "fake QQ API"

    def __init__(self, *, app_id: str = APP_ID, secret: str = SECRET, port: int = 0) -> None:
        super().__init__(port)
        self.app_id = app_id
        self.secret = secret
        self.access_token = f"fake-token-{uuid.uuid4().hex[:12]}"
        self.sent: list[SentMessage] = []
        self.token_requests = 0
        self._lock = threading.Lock()

    def create_app(self) -> Starlette:
        return create_app(self)

    def base_url(self, port: int) -> str:
        # The adapter joins paths onto the base, so the trailing slash matters.
        return f"http://127.0.0.1:{port}/"

    @property
    def auth_url(self) -> str:
        """What QQ_AUTH_BASE should be."""
        return f"{self.url}app/getAppAccessToken"

    def reset(self) -> None:
        """Forget the messages sent so far."""
        with self._lock:
            self.sent.clear()

    def wait_for_messages(self, count: int = 1, timeout: float = 30.0) -> list[SentMessage]:
        """The messages sent so far, once there are at least ``count`` (or the timeout ends)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.sent) >= count:
                    return list(self.sent)
            time.sleep(0.02)
        with self._lock:
            return list(self.sent)

    def _token(self, body: Any) -> Response:
        with self._lock:
            self.token_requests += 1
        if not isinstance(body, dict) or body.get("appId") != self.app_id:
            return JSONResponse({"code": 100007, "message": "appid invalid"})
        if body.get("clientSecret") != self.secret:
            return JSONResponse({"code": 100016, "message": "invalid appid or secret"})
        return JSONResponse({"access_token": self.access_token, "expires_in": "7200"})

    def _authorised(self, request: Request) -> bool:
        return request.headers.get("authorization") == f"QQBot {self.access_token}"

    def _post_message(self, scene: str, target: str, request: Request, body: Any) -> Response:
        if not self._authorised(request):
            return _api_error(401, 11244, "token not exist or expire")
        if not isinstance(body, dict) or body.get("msg_type") not in (0, 1, 2, 3, 4, 7):
            return _api_error(400, 40034001, "msg_type 参数错误")
        if _LINK_RE.search(str(body.get("content") or "")):
            return _api_error(400, 40054010, "消息发送失败, 不允许发送url")
        with self._lock:
            replies = [m for m in self.sent if m.body.get("msg_id") == body.get("msg_id")]
            if body.get("msg_id") is not None:
                if any(m.body.get("msg_seq") == body.get("msg_seq") for m in replies):
                    return _api_error(400, 40054005, "消息被去重，请检查请求msgseq")
                if len(replies) >= MAX_PASSIVE_REPLIES:
                    return _api_error(400, 22009, "msg limit exceed")
            self.sent.append(SentMessage(scene, target, body, dict(request.headers)))
        return JSONResponse(
            {"id": f"ROBOT1.0_{uuid.uuid4().hex}", "timestamp": datetime.now(_CHINA).isoformat()}
        )


def _api_error(status: int, code: int, message: str) -> JSONResponse:
    body = {"message": message, "code": code, "err_code": code, "trace_id": uuid.uuid4().hex}
    return JSONResponse(body, status_code=status)


def create_app(fake: FakeQQ) -> Starlette:
    """The ASGI app serving ``fake``."""

    async def body_of(request: Request) -> Any:
        try:
            return json.loads(await request.body() or b"null")
        except ValueError:
            return None

    async def token(request: Request) -> Response:
        return fake._token(await body_of(request))

    async def me(request: Request) -> Response:
        if not fake._authorised(request):
            return _api_error(401, 11244, "token not exist or expire")
        user = {"id": BOT_USER_ID, "username": BOT_NAME, "avatar": "", "bot": True}
        return JSONResponse(user | {"union_openid": "", "union_user_account": ""})

    async def group_message(request: Request) -> Response:
        openid = request.path_params["openid"]
        return fake._post_message("group", openid, request, await body_of(request))

    async def c2c_message(request: Request) -> Response:
        openid = request.path_params["openid"]
        return fake._post_message("c2c", openid, request, await body_of(request))

    return Starlette(
        routes=[
            Route("/app/getAppAccessToken", token, methods=["POST"]),
            Route("/users/@me", me, methods=["GET"]),
            Route("/v2/groups/{openid}/messages", group_message, methods=["POST"]),
            Route("/v2/users/{openid}/messages", c2c_message, methods=["POST"]),
        ]
    )


# --------------------------------------------------------------------------- webhook deliveries


def signing_key(secret: str) -> Ed25519PrivateKey:
    """The bot's Ed25519 key: the secret repeated until it has 32 bytes, as the seed."""
    seed = secret.encode()
    while len(seed) < 32:
        seed += secret.encode()
    return Ed25519PrivateKey.from_private_bytes(seed[:32])


def webhook_delivery(
    payload: dict[str, Any], *, app_id: str = APP_ID, secret: str = SECRET
) -> tuple[dict[str, str], bytes]:
    """Headers and body of a webhook POST as QQ sends it, signed over timestamp + body."""
    body = json.dumps(payload, ensure_ascii=False).encode()
    timestamp = str(int(time.time()))
    signature = signing_key(secret).sign(timestamp.encode() + body).hex()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "QQBot-Callback",
        "X-Bot-Appid": app_id,
        "X-Signature-Ed25519": signature,
        "X-Signature-Method": "Ed25519",
        "X-Signature-Timestamp": timestamp,
    }
    return headers, body


def validation_request(plain_token: str, event_ts: str) -> dict[str, Any]:
    """The op 13 payload QQ sends when a callback URL is configured."""
    return {"op": 13, "d": {"plain_token": plain_token, "event_ts": event_ts}}


def group_at_message(
    content: str, *, message_id: str, group_openid: str, member_openid: str, seq: int = 1
) -> dict[str, Any]:
    """A GROUP_AT_MESSAGE_CREATE dispatch: someone @-mentioned the bot in a group."""
    return {
        "op": 0,
        "id": f"GROUP_AT_MESSAGE_CREATE:{uuid.uuid4().hex}",
        "t": "GROUP_AT_MESSAGE_CREATE",
        "s": seq,
        "d": {
            "id": message_id,
            "content": content,
            "timestamp": datetime.now(_CHINA).isoformat(timespec="seconds"),
            "group_id": group_openid,
            "group_openid": group_openid,
            "author": {
                "id": member_openid,
                "member_openid": member_openid,
                "bot": False,
                "member_role": "member",
            },
        },
    }


def c2c_message(content: str, *, message_id: str, user_openid: str, seq: int = 1) -> dict[str, Any]:
    """A C2C_MESSAGE_CREATE dispatch: a private message to the bot."""
    return {
        "op": 0,
        "id": f"C2C_MESSAGE_CREATE:{uuid.uuid4().hex}",
        "t": "C2C_MESSAGE_CREATE",
        "s": seq,
        "d": {
            "id": message_id,
            "content": content,
            "timestamp": datetime.now(_CHINA).isoformat(timespec="seconds"),
            "author": {"id": user_openid, "user_openid": user_openid},
        },
    }
