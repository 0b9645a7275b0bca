"""What the HTTP API reads and writes: request and response bodies, and the error body."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictStr, model_validator

from agent import gateway
from agent.gateway import Answer
from agent.state import Citation


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

    @classmethod
    def of(cls, answer: Answer) -> ChatResponse:
        return cls(
            answer=answer.answer,
            citations=answer.citations,
            intent=answer.intent,
            thread_id=answer.thread_id,
            trace_id=answer.trace_id,
            degraded=answer.degraded,
        )


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


INTERNAL_ERROR_MESSAGE = "服务内部出错了，请稍后再试。"


def error_response(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    """Every error the API answers: `{"error": {"code", "message", ...}}`."""
    return JSONResponse({"error": {"code": code, "message": message, **extra}}, status_code=status)


def internal_error(trace: str) -> JSONResponse:
    return error_response(500, "internal_error", INTERNAL_ERROR_MESSAGE, trace_id=trace)
