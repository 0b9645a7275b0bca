"""SQLite checkpoints written from the event loop, and pruned to one per conversation."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from agent.checkpoints import LoopSqliteSaver, checkpointer_health
from agent.context import Context
from agent.turns import QAGraph, run_turn, turn_config
from tests.conftest import ScriptedModels


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
