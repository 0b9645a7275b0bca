"""Chat models on Ollama, and the failures that count as "Ollama is not available"."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable
from typing import Any, Protocol

import httpx
import ollama
import pydantic
from circuitbreaker import CircuitBreaker, CircuitBreakerError
from langchain_core.exceptions import OutputParserException
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage
from langchain_ollama import ChatOllama

from agent.settings import Settings

OUTAGE_ERRORS: tuple[type[Exception], ...] = (
    ConnectionError,
    TimeoutError,
    httpx.HTTPError,
    ollama.ResponseError,
    ollama.RequestError,
)
"""Failures that say the dependency itself is down or broken: they trip the circuit breaker.
A reply that merely does not parse is the model's fault, not an outage."""

DEPENDENCY_ERRORS: tuple[type[BaseException], ...] = (
    CircuitBreakerError,
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


def ollama_breaker(failures: int = 3, reset_after: float = 30.0) -> CircuitBreaker:
    """Opens after `failures` outages in a row; while open, calls fail at once (the turn degrades
    without waiting for a timeout); after `reset_after` seconds one trial call goes through."""
    return CircuitBreaker(
        failure_threshold=failures,
        recovery_timeout=reset_after,
        expected_exception=OUTAGE_ERRORS,
        name="ollama",
    )


class TurnOutOfTime(TimeoutError):
    """The turn's deadline left no time for this model call: the node falls back as it would
    for a slow model, but Ollama is not blamed for it (no breaker failure, no outage)."""


DEADLINE_RESERVE_S = 1.0
"""What a model call leaves of its turn's deadline for the fallback answer and the
checkpoint write."""


async def call_model(
    runnable: Any,
    messages: list[BaseMessage],
    *,
    breaker: CircuitBreaker,
    deadline_s: float,
    turn_deadline: float | None = None,
    on_outage: Callable[[str], None] | None = None,
    stream: bool = False,
) -> Any:
    """One chat model call under the breaker and a deadline for the whole call (httpx's own
    timeouts bound each read, not a slow stream as a whole): `deadline_s`, cut short to end
    `DEADLINE_RESERVE_S` before `turn_deadline` (a `time.monotonic()` value) when one is given.
    """
    if turn_deadline is None:
        return await _guarded_call(runnable, messages, breaker, deadline_s, on_outage, stream)
    left = turn_deadline - DEADLINE_RESERVE_S - time.monotonic()
    if left <= 0:
        raise TurnOutOfTime("no time left in the turn for a model call")
    if left >= deadline_s:
        return await _guarded_call(runnable, messages, breaker, deadline_s, on_outage, stream)
    # Outside the breaker: running out of the turn's time is not a failure of Ollama's.
    budget = asyncio.timeout(left)
    try:
        async with budget:
            return await _guarded_call(runnable, messages, breaker, deadline_s, on_outage, stream)
    except TimeoutError as exc:
        if budget.expired():
            raise TurnOutOfTime("the turn's deadline came during a model call") from exc
        raise


async def _guarded_call(
    runnable: Any,
    messages: list[BaseMessage],
    breaker: CircuitBreaker,
    deadline_s: float,
    on_outage: Callable[[str], None] | None,
    stream: bool,
) -> Any:
    try:
        # The library checks for an open circuit in its decorators only, not in `with`.
        if breaker.opened:
            raise CircuitBreakerError(breaker)
        with breaker:
            async with asyncio.timeout(deadline_s):
                # Ollama streams unless told otherwise; a whole reply in one response is cheaper
                # when nobody watches the tokens.
                return await runnable.ainvoke(messages, stream=stream)
    except (CircuitBreakerError, *OUTAGE_ERRORS):
        if on_outage is not None:
            on_outage("ollama")
        raise


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


def usage_counts(message: BaseMessage) -> tuple[int, int]:
    """Prompt and completion tokens Ollama reported for a model reply ((0, 0) if unknown)."""
    usage = getattr(message, "usage_metadata", None)
    if not usage:
        return 0, 0
    return int(usage.get("input_tokens", 0)), int(usage.get("output_tokens", 0))
