"""What the HTTP API reads and writes: request and response bodies, and the error body."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi.responses import JSONResponse
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictStr,
    model_validator,
)

from agent import gateway
from agent.gateway import Answer
from agent.state import Citation
from tools.text import encodable, has_lone_surrogate


def _id_text(value: Any) -> Any:
    # OneBot sends numeric ids, the official QQ API opaque strings: accept both.
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _encodable_id(value: str) -> str:
    # An id picks a conversation: changing it would file the turn elsewhere, so refuse it.
    if has_lone_surrogate(value):
        raise ValueError("含有不成对的 UTF-16 代理字符，无法使用")
    return value


IdText = Annotated[
    StrictStr,
    BeforeValidator(_id_text),
    AfterValidator(_encodable_id),
    Field(min_length=1, max_length=128),
]
Text = Annotated[StrictStr, AfterValidator(encodable)]
"""Free text from a client: an unpaired surrogate becomes U+FFFD, so it can be stored."""


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
    text: Text

    @model_validator(mode="after")
    def _text_not_blank(self) -> ChatRequest:
        if not self.text.strip():
            raise ValueError("text 不能为空")
        return self


class StreamRequest(ChatRequest):
    trace: bool = False
    """Node events in full: rendered prompts, raw model output, passage texts; admins only."""
    tenant: StrictStr | None = Field(default=None, max_length=64)
    """Ask as this tenant instead of the key's own; admins only (the console's playground)."""
    profile: StrictStr | None = Field(default=None, max_length=64)
    """Answer with this gray-release profile instead of the one its rules pick; admins only."""


class FeedbackRequest(Speaker):
    rating: Literal["good", "bad"]
    comment: Text = Field(default="", max_length=500)


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


class ContentPart(BaseModel):
    """One part of an OpenAI message's content: text, or what qqrag cannot read (image_url,
    input_audio, file, an assistant's refusal)."""

    model_config = ConfigDict(extra="ignore")

    type: StrictStr
    text: Text | None = None

    @model_validator(mode="after")
    def _text_has_text(self) -> ContentPart:
        if self.type == "text" and self.text is None:
            raise ValueError("type 为 text 的内容缺少 text 字段")
        return self


class OpenAIMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: StrictStr
    content: Text | list[ContentPart] | None = None

    def text(self) -> str:
        """The message's text: its text parts, one per line, when it comes in parts."""
        if isinstance(self.content, list):
            return "\n".join(part.text or "" for part in self.content if part.type == "text")
        return self.content or ""

    def other_parts(self) -> list[str]:
        """The types of the parts that are not text, in order, each once."""
        if not isinstance(self.content, list):
            return []
        return list(dict.fromkeys(part.type for part in self.content if part.type != "text"))


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: StrictStr = "qqrag"
    messages: list[OpenAIMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: Annotated[StrictStr, AfterValidator(_encodable_id), Field(max_length=128)] | None = None


INTERNAL_ERROR_MESSAGE = "服务内部出错了，请稍后再试。"


def error_response(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    """Every error the API answers: `{"error": {"code", "message", ...}}`."""
    return JSONResponse({"error": {"code": code, "message": message, **extra}}, status_code=status)
