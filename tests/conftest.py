"""Shared fixtures: a real embedded knowledge base, real SQLite checkpoints, scripted models."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable, RunnableLambda
from psycopg import sql
from pydantic import BaseModel, ConfigDict, Field

from agent.checkpoints import LoopSqliteSaver
from agent.context import Context
from agent.services import Services, set_services
from agent.settings import Settings, get_settings
from agent.turns import QAGraph, TurnResult, stream_turn
from evals.fakes.maxkb import FIXTURE_KNOWLEDGE_ID, FakeMaxKB, load_fixture_knowledge
from evals.harness import free_port
from graphs.qa import build
from tools.kb import EmbeddedKB

FIXTURES = Path(__file__).parent / "fixtures"

REDIS_URL = os.environ.get("QQRAG_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_URL = os.environ.get(
    "QQRAG_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
SCALE_OUT_REQUIRED = os.environ.get("QQRAG_REQUIRE_SCALE_OUT") == "1"
"""`.ci/run` sets it: there a missing PostgreSQL or Redis fails the tests instead of skipping."""


def redis_problem() -> str | None:
    """Why the test Redis cannot be used, or None when it answers."""
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
    except redis.RedisError as exc:
        return f"Redis not reachable at {REDIS_URL} ({exc})"
    return None


def postgres_problem() -> str | None:
    """Why the test PostgreSQL cannot be used, or None when it answers."""
    try:
        psycopg.connect(POSTGRES_URL, connect_timeout=2).close()
    except psycopg.Error as exc:
        return f"PostgreSQL not reachable at {POSTGRES_URL} ({exc})"
    return None


@contextmanager
def postgres_schema() -> Iterator[str]:
    """A connection string whose tables land in a fresh schema, dropped afterwards."""
    schema = f"qqrag_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    try:
        yield psycopg.conninfo.make_conninfo(POSTGRES_URL, options=f"-c search_path={schema}")
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


def require_servers(problem: str | None) -> None:
    """Skip for `problem`, or fail where the scale-out servers are required."""
    if problem:
        (pytest.fail if SCALE_OUT_REQUIRED else pytest.skip)(problem)


@contextmanager
def redis_key_prefix() -> Iterator[str]:
    """A key prefix of a test run's own; its keys are deleted afterwards."""
    prefix = f"qqrag-test-{uuid.uuid4().hex[:12]}:"
    try:
        yield prefix
    finally:
        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(match=f"{prefix}*"):
            client.delete(key)
        client.close()


@pytest.fixture
def redis_space() -> Iterator[str]:
    """A key prefix of the test's own in the test Redis, for the Redis runs of a suite over
    every implementation of an interface; skipped or failed (`require_servers`) without Redis."""
    require_servers(redis_problem())
    with redis_key_prefix() as prefix:
        yield prefix


class ScriptedChatModel(BaseChatModel):
    """Replies from a script, records what it was sent; `bind_tools` returns itself.

    A scripted reply may be an exception, raised as a failing Ollama call would raise it.
    Structured output parses the next reply's content as JSON into the requested schema.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    script: list[AIMessage | BaseException]
    calls: list[list[BaseMessage]] = Field(default_factory=list)
    bound_tools: list[Any] = Field(default_factory=list)
    gate: asyncio.Event | None = None
    """While set to an unset event, calls hang until it is set: a model that does not answer."""
    hanging: asyncio.Event = Field(default_factory=asyncio.Event)
    """Set once a call waits at the gate."""

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def _next(self, messages: list[BaseMessage]) -> AIMessage:
        self.calls.append(list(messages))
        if not self.script:
            raise AssertionError(f"unexpected model call #{len(self.calls)}")
        reply = self.script.pop(0)
        if isinstance(reply, BaseException):
            raise reply
        return reply

    def _generate(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=self._next(messages))])

    async def _agenerate(
        self, messages: list[BaseMessage], *args: Any, **kwargs: Any
    ) -> ChatResult:
        if self.gate is not None:
            self.hanging.set()
            await self.gate.wait()
        return self._generate(messages)

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> ScriptedChatModel:  # type: ignore[override]
        self.bound_tools = list(tools)
        return self

    def with_structured_output(  # type: ignore[override]
        self, schema: type[BaseModel], *, include_raw: bool = False, **kwargs: Any
    ) -> Runnable[LanguageModelInput, Any]:
        def parse(messages: list[BaseMessage], **kwargs: Any) -> dict[str, Any]:
            raw = self._next(messages)
            try:
                return {
                    "raw": raw,
                    "parsed": schema.model_validate_json(str(raw.content)),
                    "parsing_error": None,
                }
            except ValueError as exc:
                return {"raw": raw, "parsed": None, "parsing_error": exc}

        return RunnableLambda(parse)


class ScriptedModels:
    """A chat model factory handing out one scripted model, whatever name is asked for."""

    def __init__(self) -> None:
        self.model = ScriptedChatModel(script=[])
        self.requests: list[tuple[str, bool]] = []

    def __call__(self, model: str, *, reasoning: bool, temperature: float) -> BaseChatModel:
        self.requests.append((model, reasoning))
        return self.model

    def say(self, *replies: AIMessage | BaseException | str) -> None:
        for reply in replies:
            self.model.script.append(AIMessage(content=reply) if isinstance(reply, str) else reply)

    def hang(self) -> asyncio.Event:
        """Calls wait from now on until the returned event is set."""
        self.model.gate = asyncio.Event()
        return self.model.gate

    @property
    def calls(self) -> list[list[BaseMessage]]:
        return self.model.calls


def drop_developer_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unset every exported QQRAG_* (and OLLAMA_HOST); child processes started meanwhile
    inherit none of them."""
    for name in list(os.environ):
        if name.startswith("QQRAG_") or name == "OLLAMA_HOST":
            monkeypatch.delenv(name)


@pytest.fixture(autouse=True)
def isolated_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No developer's `.env` or exported QQRAG_* variable leaks into a test."""
    drop_developer_settings(monkeypatch)
    monkeypatch.chdir(tmp_path)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture
def kb(tmp_path: Path) -> Iterator[EmbeddedKB]:
    base = EmbeddedKB(tmp_path / "kb.sqlite", "test")
    base.add_path(FIXTURES / "kb")
    yield base
    base.close()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, ollama_url="http://127.0.0.1:9", _env_file=None)  # type: ignore[call-arg]


@pytest.fixture
def models() -> ScriptedModels:
    return ScriptedModels()


@pytest.fixture
def services(settings: Settings, kb: EmbeddedKB, models: ScriptedModels) -> Iterator[Services]:
    services = Services(settings=settings, knowledge=kb, chat_models=models)
    set_services(services)
    yield services
    set_services(None)


@pytest.fixture
async def graph(services: Services, tmp_path: Path) -> AsyncIterator[QAGraph]:
    async with LoopSqliteSaver.open(tmp_path / "checkpoints.sqlite") as saver:
        yield build(saver)


async def run_turn(graph: QAGraph, thread: str, text: str, context: Context) -> TurnResult:
    """One whole turn straight through the graph, without the gateway's gates."""
    events = [event async for event in stream_turn(graph, thread, text, context, tokens=False)]
    kind, result = events[-1]
    assert kind == "result" and isinstance(result, TurnResult)
    return result


@pytest.fixture(scope="module")
def maxkb_server() -> Iterator[FakeMaxKB]:
    with FakeMaxKB(knowledge=[load_fixture_knowledge(FIXTURES / "maxkb")]) as fake:
        yield fake


@pytest.fixture
def maxkb(maxkb_server: FakeMaxKB) -> FakeMaxKB:
    """The module's fake MaxKB as good as new: requests, faults and every switch reset."""
    maxkb_server.reset()
    maxkb_server.knowledge = {FIXTURE_KNOWLEDGE_ID: load_fixture_knowledge(FIXTURES / "maxkb")}
    maxkb_server.v1_put_supported = True
    maxkb_server.show_source = True
    maxkb_server.published = True
    maxkb_server.llm_fails = False
    maxkb_server.access_num = 100
    maxkb_server.workspace = "default"
    maxkb_server.language = "zh"
    maxkb_server.key_active = True
    return maxkb_server


@contextmanager
def fake_in_foreground(module: str, *args: str) -> Iterator[str]:
    """`python -m MODULE --port P ARGS…` run the way a person tries a fake; yields its URL."""
    port = free_port()
    command = [sys.executable, "-m", module, "--port", str(port), *args]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


def when_up(call: Callable[[], httpx.Response], timeout: float = 10.0) -> httpx.Response:
    """The response of `call` once the server accepts connections."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except httpx.ConnectError:
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.05)
