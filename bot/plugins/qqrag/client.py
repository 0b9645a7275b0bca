"""HTTP calls to the qqrag service (`POST /v1/chat`)."""

from __future__ import annotations

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

_CONNECT_TIMEOUT_S = 5.0


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
    """A thin client for the qqrag service; one short-lived connection per call."""

    def __init__(self, base_url: str, *, api_key: str = "", timeout: float = 90.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    async def chat(self, speaker: Speaker, text: str) -> Answer:
        """Ask the question (or a command such as `/帮助`) and return the service's answer."""
        data = await self._post("/v1/chat", {**asdict(speaker), "text": text})
        try:
            return Answer.model_validate(data)
        except ValidationError as exc:
            logger.error(f"qqrag service sent an unexpected chat answer: {exc}")
            raise ServiceError(FAILED, code="bad_response") from exc

    async def _post(self, path: str, body: dict[str, Any]) -> Any:
        timeout = httpx.Timeout(self.timeout, connect=min(_CONNECT_TIMEOUT_S, self.timeout))
        try:
            async with httpx.AsyncClient(
                base_url=self.base_url, headers=self._headers, timeout=timeout
            ) as http:
                response = await http.post(path, json=body)
        except httpx.TimeoutException as exc:
            logger.warning(f"qqrag service at {self.base_url} timed out on {path}: {exc!r}")
            raise ServiceError(TIMEOUT, code="timeout") from exc
        except httpx.HTTPError as exc:
            logger.warning(f"qqrag service at {self.base_url} unreachable on {path}: {exc!r}")
            raise ServiceError(UNREACHABLE, code="unreachable") from exc
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
    if status == 429:
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
