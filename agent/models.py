"""Chat models on Ollama, and the failures that count as "Ollama is not available"."""

from __future__ import annotations

import json
import re
from typing import Any, Protocol

import httpx
import ollama
import pydantic
from langchain_core.exceptions import OutputParserException
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage
from langchain_ollama import ChatOllama

from agent.settings import Settings

DEPENDENCY_ERRORS: tuple[type[BaseException], ...] = (
    ConnectionError,
    TimeoutError,
    httpx.HTTPError,
    ollama.ResponseError,
    ollama.RequestError,
    json.JSONDecodeError,
    OutputParserException,
    pydantic.ValidationError,
)
"""What a chat model call raises when Ollama is down, slow, missing the model or talks nonsense.
Nodes catch these and fall back; anything else is a bug and propagates."""

_THINK_BLOCK = re.compile(r"<think>.*?(</think>|$)", re.DOTALL)


class ChatModelFactory(Protocol):
    def __call__(self, model: str, *, reasoning: bool, temperature: float) -> BaseChatModel: ...


class OllamaChatModels:
    """Builds `ChatOllama` clients once per (model, reasoning, temperature) and reuses them,
    so their HTTP connection pools survive across turns."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._models: dict[tuple[str, bool, float], BaseChatModel] = {}

    def __call__(self, model: str, *, reasoning: bool, temperature: float) -> BaseChatModel:
        key = (model, reasoning, temperature)
        if key not in self._models:
            self._models[key] = ChatOllama(
                model=model,
                base_url=self._settings.ollama_url,
                # An explicit False sends `think: false`: Qwen3 thinks by default otherwise.
                reasoning=reasoning,
                temperature=temperature,
                num_ctx=8192,
                keep_alive="10m",
                client_kwargs={"timeout": self._settings.ollama_timeout},
            )
        return self._models[key]


def message_text(message: BaseMessage) -> str:
    """Plain text of a message, with any `<think>` block removed (some templates inline it)."""
    content: Any = message.content
    if isinstance(content, list):
        content = "".join(
            part if isinstance(part, str) else str(part.get("text", "")) for part in content
        )
    return _THINK_BLOCK.sub("", str(content)).strip()


def usage_tokens(message: BaseMessage) -> int:
    """Prompt plus completion tokens Ollama reported for a model reply (0 if unknown)."""
    usage = getattr(message, "usage_metadata", None)
    return int(usage.get("total_tokens", 0)) if usage else 0
