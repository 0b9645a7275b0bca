"""HTTP calls to the qqrag service (`POST /v1/chat`)."""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass
from typing import Any, Literal

import httpx
from nonebot.log import logger
from pydantic import BaseModel, ValidationError

UNREACHABLE = "知识库服务暂时连不上，请稍后再试。"
TIMEOUT = "知识库服务响应超时，请稍后再试。"
RATE_LIMITED = "提问太频繁了，请稍后再试。"
BUSY = "知识库服务正忙，请稍后再试。"
REJECTED = "这个问题太长或格式不对，请精简后再试。"
UNAUTHORIZED = "机器人与知识库服务的连接配置有误，请联系管理员。"
FAILED = "知识库服务出错了，请稍后再试。"
STORAGE_FULL = "知识库服务的存储空间满了，暂时无法回答，请联系管理员。"

_CONNECT_TIMEOUT_S = 5.0
# Below the keep-alive of uvicorn (5 s, `qqrag serve`): the bot drops an idle connection before
# the service closes it, rather than sending a question down a connection being closed.
_KEEPALIVE_EXPIRY_S = 4.0


@dataclass(frozen=True)
class Speaker:
    """Who asked, where: the service keeps one conversation per speaker."""

    platform: Literal["qq", "onebot"]
    scene: Literal["group", "private"]
    user_id: str
    group_id: str | None = None
    message_id: str | None = None


class Citation(BaseModel):
    """One entry of the service's numbered citation list."""

    index: int
    title: str = ""
    source: str = ""
    passage_id: str = ""
    snippet: str = ""


class Answer(BaseModel):
    """The service's reply to `/v1/chat`."""

    answer: str
    citations: list[Citation] = []
    intent: str = ""
    thread_id: str = ""
    trace_id: str = ""
    degraded: bool = False


class ServiceError(Exception):
    """The service gave no usable answer; `user_message` is fit to show in the chat."""

    def __init__(self, user_message: str, *, code: str) -> None:
        super().__init__(user_message)
        self.user_message = user_message
        self.code = code


class ServiceClient:
    """A client for the qqrag service: one pool of keep-alive connections for the bot's lifetime.

    At most `max_connections` questions are in flight; the others wait for a connection, and
    that wait counts within `timeout`. A question whose time runs out while waiting never
    reached the service, so it gets BUSY; TIMEOUT means the service took too long to answer.
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str = "",
        timeout: float = 90.0,
        max_connections: int = 32,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.max_connections = max_connections
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # One question per pooled connection. Questions wait here rather than inside httpx's
        # pool, so running out of time unsent (BUSY) is told apart from the service's TIMEOUT.
        self._slots = asyncio.Semaphore(max_connections)
        self._http: httpx.AsyncClient | None = None

    async def chat(self, speaker: Speaker, text: str) -> Answer:
        """Ask the question (or a command such as `/帮助`) and return the service's answer."""
        data = await self._post("/v1/chat", {**asdict(speaker), "text": text})
        try:
            return Answer.model_validate(data)
        except ValidationError as exc:
            logger.error(f"qqrag service sent an unexpected chat answer: {exc}")
            raise ServiceError(FAILED, code="bad_response") from exc

    async def close(self) -> None:
        """Close the pooled connections (on the driver's shutdown); a later call opens new ones."""
        if self._http is not None:
            http, self._http = self._http, None
            await http.aclose()

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(
                headers=self._headers,
                # The deadline in `_post` bounds the whole call; only connecting has its own.
                timeout=httpx.Timeout(None, connect=_CONNECT_TIMEOUT_S),
                limits=httpx.Limits(
                    max_connections=self.max_connections,
                    max_keepalive_connections=self.max_connections,
                    keepalive_expiry=_KEEPALIVE_EXPIRY_S,
                ),
            )
        return self._http

    async def _post(self, path: str, body: dict[str, Any]) -> Any:
        deadline = asyncio.get_running_loop().time() + self.timeout
        try:
            async with asyncio.timeout_at(deadline):
                await self._slots.acquire()
        except TimeoutError:
            logger.warning(
                f"all {self.max_connections} connections to the qqrag service stayed busy "
                f"for {self.timeout} s; {path} was not sent"
            )
            raise ServiceError(BUSY, code="no_connection") from None
        try:
            async with asyncio.timeout_at(deadline):
                response = await self._client().post(self.base_url + path, json=body)
        except TimeoutError as exc:
            logger.warning(f"qqrag service at {self.base_url} timed out on {path}")
            raise ServiceError(TIMEOUT, code="timeout") from exc
        except httpx.HTTPError as exc:
            logger.warning(f"qqrag service at {self.base_url} unreachable on {path}: {exc!r}")
            raise ServiceError(UNREACHABLE, code="unreachable") from exc
        finally:
            self._slots.release()
        if response.status_code == 200:
            try:
                return response.json()
            except ValueError as exc:
                raise ServiceError(FAILED, code="bad_response") from exc
        raise _service_error(path, response)


def _service_error(path: str, response: httpx.Response) -> ServiceError:
    code, message = _error_body(response)
    status = response.status_code
    logger.warning(f"qqrag service answered {path} with HTTP {status} {code}: {message}")
    if code == "storage_full":
        user_message = STORAGE_FULL
    elif status == 429:
        user_message = message or RATE_LIMITED
    elif status == 503:
        user_message = message or BUSY
    elif status in (401, 403):
        user_message = UNAUTHORIZED
    elif status == 422:
        user_message = REJECTED
    else:
        user_message = FAILED
    return ServiceError(user_message, code=code or f"http_{status}")


def _error_body(response: httpx.Response) -> tuple[str, str]:
    """`(code, message)` from `{"error": {"code", "message"}}`; empty strings when absent."""
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        return "", ""
    if not isinstance(error, dict):
        return "", ""
    return str(error.get("code") or ""), str(error.get("message") or "").strip()
