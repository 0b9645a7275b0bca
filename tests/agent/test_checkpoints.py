"""Every checkpointer `open_checkpointer` picks (SQLite, and PostgreSQL when reachable) keeps a
conversation alike: one suite run over each. Then the SQLite saver's own: checkpoints written
from the event loop, and pruned to one per conversation.

The PostgreSQL runs are skipped when it is not reachable (QQRAG_TEST_POSTGRES_URL, default
postgresql://postgres@127.0.0.1:5432/test), failed instead when QQRAG_REQUIRE_SCALE_OUT=1.
"""

from __future__ import annotations

import asyncio
import operator
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Annotated, TypedDict

import pytest
from langgraph.checkpoint.base import CheckpointTuple
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph

from agent.checkpoints import Checkpointer, LoopSqliteSaver, checkpointer_health, open_checkpointer
from agent.context import Context
from agent.settings import Settings
from agent.turns import QAGraph, turn_config
from tests.conftest import (
    ScriptedModels,
    postgres_problem,
    postgres_schema,
    require_servers,
    run_turn,
)

OpenCheckpointer = Callable[[], AbstractAsyncContextManager[Checkpointer]]


@pytest.fixture(params=["sqlite", "postgres"])
def open_saver(request: pytest.FixtureRequest, settings: Settings) -> Iterator[OpenCheckpointer]:
    """Opens the checkpointer the settings pick, on one database each time."""
    if request.param == "sqlite":
        yield lambda: open_checkpointer(settings)
        return
    require_servers(postgres_problem())
    with postgres_schema() as url:
        chosen = settings.model_copy(update={"checkpointer": "postgres", "postgres_url": url})
        yield lambda: open_checkpointer(chosen)


class Said(TypedDict):
    said: Annotated[list[str], operator.add]


def echo(saver: Checkpointer) -> CompiledStateGraph[Said, None, Said, Said]:
    def repeat(state: Said) -> Said:
        return {"said": [f"回声{len(state['said'])}"]}

    builder = StateGraph(Said)
    builder.add_node("repeat", repeat)
    builder.add_edge(START, "repeat")
    builder.add_edge("repeat", END)
    return builder.compile(checkpointer=saver)


async def test_a_conversation_outlives_its_checkpointer_and_is_deleted_whole(
    open_saver: OpenCheckpointer,
):
    async with open_saver() as saver:
        graph = echo(saver)
        await graph.ainvoke({"said": ["你好"]}, turn_config("t1"))
        await graph.ainvoke({"said": ["再见"]}, turn_config("t1"))
        await graph.ainvoke({"said": ["别的"]}, turn_config("t2"))
        assert (await checkpointer_health(saver)).ok

    async with open_saver() as saver:
        graph = echo(saver)
        state = await graph.aget_state(turn_config("t1"))
        assert state.values["said"] == ["你好", "回声1", "再见", "回声3"]
        await saver.adelete_thread("t1")
        assert (await graph.aget_state(turn_config("t1"))).values == {}
        assert (await graph.aget_state(turn_config("t2"))).values["said"] == ["别的", "回声1"]


# —— the SQLite saver ——


def rows(path: Path, table: str) -> dict[str, int]:
    with sqlite3.connect(path) as conn:
        found = conn.execute(f"SELECT thread_id, count(*) FROM {table} GROUP BY thread_id")
        return dict(found.fetchall())


async def test_a_conversation_keeps_one_checkpoint_and_every_message(
    graph: QAGraph, models: ScriptedModels, tmp_path: Path
):
    for n in range(3):
        models.say(f"星尘打印机整机保修两年[1]。（{n}）")
        await run_turn(graph, "t1", "星尘打印机保修多久？", Context())
    models.say("星尘打印机标准版售价 1999 元[1]。")
    await run_turn(graph, "t2", "星尘打印机售价多少？", Context())

    assert rows(tmp_path / "checkpoints.sqlite", "checkpoints") == {"t1": 1, "t2": 1}
    state = (await graph.aget_state(turn_config("t1"))).values
    assert [m.type for m in state["messages"]] == ["human", "ai"] * 3
    assert state["messages"][-1].content == "星尘打印机整机保修两年[1]。（2）"


async def test_prune_strategies_and_health(graph: QAGraph, models: ScriptedModels, tmp_path: Path):
    for thread in ("a", "b"):
        models.say("星尘打印机整机保修两年[1]。")
        await run_turn(graph, thread, "星尘打印机保修多久？", Context())
    async with LoopSqliteSaver.open(tmp_path / "checkpoints.sqlite") as saver:
        assert (await checkpointer_health(saver)).ok
        await saver.aprune(["a"], strategy="delete")
        assert rows(tmp_path / "checkpoints.sqlite", "checkpoints") == {"b": 1}
        with pytest.raises(TypeError):
            await saver.aprune("b")
        with pytest.raises(ValueError, match="strategy"):
            await saver.aprune(["b"], strategy="keep_oldest")
    closed = await checkpointer_health(saver)
    assert closed.status == "down" and closed.message.startswith("检查点数据库不可用")
    assert await graph.aget_state(turn_config("b")) is not None


async def test_a_handed_on_checkpoint_serves_one_read_of_the_latest_in_its_task(tmp_path: Path):
    """The gateway's replay check hands its read on to the turn: the next read of the thread's
    latest checkpoint gets it without the database, once; a write drops it, and neither other
    threads, a given checkpoint id nor another request's task see it."""
    async with LoopSqliteSaver.open(tmp_path / "checkpoints.sqlite") as saver:
        graph = echo(saver)
        await graph.ainvoke({"said": ["你好"]}, turn_config("t1"))
        await graph.ainvoke({"said": ["别的"]}, turn_config("t2"))
        latest = await saver.aget_tuple(turn_config("t1"))
        assert latest is not None
        asked = asyncio.Event()

        async def elsewhere() -> CheckpointTuple | None:
            await asked.wait()
            return await saver.aget_tuple(turn_config("t1"))

        # A task of another request, running already: its context is its own.
        other = asyncio.create_task(elsewhere())
        saver.hand_on(turn_config("t1"), latest)
        asked.set()
        assert await other is not latest
        assert await saver.aget_tuple(turn_config("t2")) is not latest
        pinned = {
            "configurable": {
                "thread_id": "t1",
                "checkpoint_id": latest.config["configurable"]["checkpoint_id"],
            }
        }
        assert await saver.aget_tuple(pinned) is not latest
        assert await saver.aget_tuple(turn_config("t1")) is latest
        assert await saver.aget_tuple(turn_config("t1")) is not latest

        saver.hand_on(turn_config("t1"), latest)
        await graph.ainvoke({"said": ["再见"]}, turn_config("t1"))
        assert (await graph.aget_state(turn_config("t1"))).values["said"] == [
            "你好",
            "回声1",
            "再见",
            "回声3",
        ]

        saver.hand_on(turn_config("t3"), None)
        assert (await graph.ainvoke({"said": ["新的"]}, turn_config("t3")))["said"] == [
            "新的",
            "回声1",
        ]
