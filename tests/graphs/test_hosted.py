"""The graph hosted by someone else's server, as `langgraph dev` (LangGraph Studio) hosts it:
nothing set up beforehand, the host's own checkpointer, and a loop that must never block."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from blockbuster import BlockBuster
from langgraph.checkpoint.memory import InMemorySaver

from agent.context import Context
from agent.services import get_services, set_services
from evals.fakes.ollama import FakeOllama
from evals.harness import free_port
from graphs.qa import build
from tests.conftest import FIXTURES, run_turn, when_up

ROOT = Path(__file__).resolve().parents[2]

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
        # The fake classify model glues the whole first question on ("…下单后发货在买保修多久？"),
        # so the price passage covers more of it than the warranty one: what matters here is
        # that the rewrite ran and the turn was answered without a blocking call.
        assert follow_up.question != "那它保修多久？" and follow_up.citations
        assert chitchat.intent == "chitchat" and chitchat.answer
        assert "谢谢" in command.answer
        audit = (await get_services()).audit
        assert audit is not None and [row["rating"] for row in audit.feedback("t")] == ["good"]
    finally:
        (await get_services()).close()


def run(api: httpx.Client, thread: str, **body: Any) -> dict[str, Any]:
    """One run of the graph on a thread through the server's HTTP API; its final state."""
    response = api.post(f"/threads/{thread}/runs/wait", json={"assistant_id": "qa", **body})
    response.raise_for_status()
    state: dict[str, Any] = response.json()
    assert "__error__" not in state, state
    return state


def ask(
    api: httpx.Client, thread: str, text: str, context: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A new message on the thread, as Studio sends it."""
    message = {"type": "human", "content": text}
    return run(api, thread, input={"messages": [message]}, context=context or {})


def rerun_from(api: httpx.Client, thread: str, node: str) -> dict[str, Any]:
    """The latest turn again from the checkpoint before `node`, as Studio re-runs a step."""
    history = api.post(f"/threads/{thread}/history", json={"limit": 20}).json()
    before = next(state for state in history if state["next"] == [node])
    return run(api, thread, input=None, checkpoint_id=before["checkpoint"]["checkpoint_id"])


@pytest.mark.skipif(
    importlib.util.find_spec("langgraph_api") is None,
    reason="the studio extra is not installed (pip install -e '.[studio]')",
)
def test_langgraph_dev_answers_and_reruns_with_an_edited_prompt(
    hosted: FakeOllama, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    # The checkout's layout in a folder of the test's own: langgraph dev keeps its threads in
    # .langgraph_api/ under the folder it starts in.
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(ROOT / "langgraph.json", project)
    (project / "graphs").symlink_to(ROOT / "graphs")
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "help.md").write_text("第一版说明", encoding="utf-8")
    monkeypatch.setenv("QQRAG_PROMPTS_DIR", str(prompts))
    # Nothing to ask the internet: no usage statistics, no check for a newer release.
    monkeypatch.setenv("LANGGRAPH_CLI_NO_ANALYTICS", "1")
    monkeypatch.setenv("LANGGRAPH_NO_VERSION_CHECK", "1")
    port = free_port()
    command = [
        str(Path(sys.executable).with_name("langgraph")),
        *("dev", "--host", "127.0.0.1", "--port", str(port), "--no-browser", "--no-reload"),
    ]
    log_path = tmp_path / "langgraph-dev.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen(command, cwd=project, stdout=log, stderr=subprocess.STDOUT)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as api:
            assert when_up(lambda: api.get("/ok"), timeout=60).status_code == 200
            thread = api.post("/threads", json={}).json()["thread_id"]
            # Context fields as Studio's assistant settings send them: JSON, lists for tuples.
            state = ask(api, thread, "星尘打印机保修多久？", {"knowledge_bases": ["default"]})
            assert "两年" in state["messages"][-1]["content"]
            assert state["citations"][0]["source"] == "kb/stardust.md"
            assert ask(api, thread, "/帮助")["answer"] == "第一版说明"
            edited = prompts / "help.md"
            edited.write_text("第二版说明，改过了", encoding="utf-8")
            # A later modification time even where the file system keeps whole seconds only.
            mtime = edited.stat().st_mtime_ns + 1_000_000_000
            os.utime(edited, ns=(mtime, mtime))
            assert rerun_from(api, thread, "command")["answer"] == "第二版说明，改过了"
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert "BlockingError" not in log_path.read_text(encoding="utf-8", errors="replace")
