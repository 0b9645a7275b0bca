"""The graph hosted by someone else's server, as `langgraph dev` (LangGraph Studio) hosts it:
nothing set up beforehand, the host's own checkpointer, and a loop that must never block."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from blockbuster import BlockBuster
from langgraph.checkpoint.memory import InMemorySaver

from agent.context import Context
from agent.services import get_services, set_services
from evals.fakes.ollama import FakeOllama
from graphs.qa import build
from tests.conftest import FIXTURES, run_turn

ALLOWED = (
    # Uncontended locks inside LangChain and LangGraph: no I/O waits behind them.
    "threading.Lock.acquire",
    "threading.Lock.acquire_lock",
    # Prompt files are read at set-up; each render then stats its file to see an edit (hot
    # reload), a few microseconds from the kernel's cache. langgraph dev allows os.stat too.
    "os.stat",
)


@contextmanager
def no_blocking_calls() -> Iterator[None]:
    """Blockbuster, the detector langgraph dev runs, with all its functions but `ALLOWED`:
    a blocking call made by our code (or a library it calls) on the event loop raises
    BlockingError there. langgraph dev's own list is shorter (it lets file reads and writes
    through as well), so what passes here passes there."""
    detector = BlockBuster(scanned_modules=["agent", "tools", "graphs"])
    for name in ALLOWED:
        del detector.functions[name]
    detector.activate()
    try:
        yield
    finally:
        detector.deactivate()


@pytest.fixture
def hosted(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeOllama]:
    """Settings from the environment only and no services: the graph sets itself up."""
    with FakeOllama() as ollama:
        monkeypatch.setenv("QQRAG_DATA_DIR", str(tmp_path / "data"))
        monkeypatch.setenv("QQRAG_DEFAULT_DOCS", str(FIXTURES / "kb"))
        monkeypatch.setenv("QQRAG_OLLAMA_URL", ollama.url)
        set_services(None)
        try:
            yield ollama
        finally:
            set_services(None)


async def test_hosted_turns_make_no_blocking_call(hosted: FakeOllama):
    graph = build(InMemorySaver())
    # The host reads the settings when it builds a run's context, before any node runs.
    context = Context()
    rewriting = dataclasses.replace(context, rewrite="model")
    try:
        with no_blocking_calls():
            # The first node sets everything up; the answer model asks for one more search.
            knowledge = await run_turn(graph, "t", "星尘打印机下单后多久发货，在哪里买？", context)
            follow_up = await run_turn(graph, "t", "那它保修多久？", rewriting)
            chitchat = await run_turn(graph, "t", "你好", context)
            command = await run_turn(graph, "t", "/反馈 好", context)
        assert "tools" in knowledge.node_seconds and knowledge.citations
        # Rewritten by the classify model (structured output) before the search.
        assert follow_up.question != "那它保修多久？" and "两年" in follow_up.answer
        assert chitchat.intent == "chitchat" and chitchat.answer
        assert "谢谢" in command.answer
        audit = (await get_services()).audit
        assert audit is not None and [row["rating"] for row in audit.feedback("t")] == ["good"]
    finally:
        (await get_services()).close()
