"""Where conversations (LangGraph checkpoints) are kept: a SQLite file for the processes of one
machine, or PostgreSQL shared by replicas on several.

Worker processes on one machine share the SQLite file (WAL mode; `FileKeyedLocks` keeps each
conversation to one turn at a time). SQLite's locks do not hold across machines or on network
filesystems, so replicas need `QQRAG_CHECKPOINTER=postgres`.
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager, closing
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import psycopg
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    DeltaChannelHistory,
    get_checkpoint_id,
)
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from langgraph.checkpoint.sqlite import SqliteSaver
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool

from agent.settings import Settings
from tools.health import Health

_HANDED_ON: ContextVar[dict[str, CheckpointTuple | None] | None] = ContextVar(
    "qqrag_checkpoint_handed_on", default=None
)
"""The latest checkpoint a turn has read already, by thread, for `LoopSqliteSaver.hand_on`."""


class LoopSqliteSaver(SqliteSaver):
    """SQLite checkpoints written from the event loop's own thread.

    `AsyncSqliteSaver` sends every statement, fetch and cursor close to a worker thread and
    back; with a few statements per turn those hand-offs (and the GIL traffic they cause) cost
    more CPU than the statements: a turn reads one checkpoint and writes one (durability
    "exit"), each well under a millisecond on a local file in WAL mode with synchronous=NORMAL,
    which commits without an fsync. The occasional WAL checkpoint does fsync; that stall is the
    price, paid about once per thousand pages written.
    """

    @classmethod
    @asynccontextmanager
    async def open(cls, path: Path) -> AsyncIterator[LoopSqliteSaver]:
        # check_same_thread=False: the saver's own lock serialises use, and `qqrag chat` or a
        # test may close it from another thread than the one that opened it.
        with closing(sqlite3.connect(str(path), check_same_thread=False)) as conn:
            saver = cls(conn)
            saver.setup()
            # WAL with synchronous=NORMAL still commits each turn atomically (whole or absent
            # after a crash); it skips an fsync per commit, which serialised writes under load.
            conn.execute("PRAGMA synchronous=NORMAL")
            yield saver

    def hand_on(self, config: RunnableConfig, checkpoint: CheckpointTuple | None) -> None:
        """Serve `checkpoint`, just read for `config`'s thread, to the next read of that
        thread's latest checkpoint in this task or those it starts, instead of reading it again
        (once; a write to the thread drops it). Only for a caller that holds the thread's lock, so nothing can
        have written the thread in between: the gateway's replay check reads the checkpoint
        the turn then reads too, and decoding it is a tenth of a turn's CPU."""
        _HANDED_ON.set({config["configurable"]["thread_id"]: checkpoint})

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        handed = _HANDED_ON.get()
        configurable = config["configurable"]
        thread = configurable["thread_id"]
        if (
            handed is not None
            and thread in handed
            and not configurable.get("checkpoint_ns")
            and not get_checkpoint_id(config)
        ):
            return handed.pop(thread)
        return self.get_tuple(config)

    def _drop_handed_on(self, config: RunnableConfig) -> None:
        if (handed := _HANDED_ON.get()) is not None:
            handed.pop(config["configurable"]["thread_id"], None)

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        for item in self.list(config, filter=filter, before=before, limit=limit):
            yield item

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        self._drop_handed_on(config)
        return self.put(config, checkpoint, metadata, new_versions)

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        self._drop_handed_on(config)
        self.put_writes(config, writes, task_id, task_path)

    async def adelete_thread(self, thread_id: str) -> None:
        if (handed := _HANDED_ON.get()) is not None:
            handed.pop(thread_id, None)
        self.delete_thread(thread_id)

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """`keep_latest`: each thread's newest checkpoint (per namespace) and its writes stay,
        older ones go; `delete`: the threads go. Like `PostgresSaver.prune`."""
        if isinstance(thread_ids, str):
            raise TypeError("thread_ids must be a sequence of thread IDs, not a str")
        if strategy not in ("keep_latest", "delete"):
            raise ValueError(f"Unknown prune strategy: {strategy!r}")
        with self.cursor() as cur:
            for thread in map(str, thread_ids):
                if strategy == "delete":
                    cur.execute("DELETE FROM checkpoints WHERE thread_id = ?", (thread,))
                    cur.execute("DELETE FROM writes WHERE thread_id = ?", (thread,))
                    continue
                # Checkpoint ids are time-ordered (uuid6): the greatest is the newest.
                cur.execute(
                    "DELETE FROM checkpoints WHERE thread_id = ?1 AND checkpoint_id < ("
                    " SELECT max(newest.checkpoint_id) FROM checkpoints AS newest"
                    " WHERE newest.thread_id = ?1"
                    " AND newest.checkpoint_ns = checkpoints.checkpoint_ns)",
                    (thread,),
                )
                cur.execute(
                    "DELETE FROM writes WHERE thread_id = ?1 AND NOT EXISTS ("
                    " SELECT 1 FROM checkpoints AS kept WHERE kept.thread_id = ?1"
                    " AND kept.checkpoint_ns = writes.checkpoint_ns"
                    " AND kept.checkpoint_id = writes.checkpoint_id)",
                    (thread,),
                )

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        self.prune(thread_ids, strategy=strategy)

    async def aget_delta_channel_history(
        self, *, config: RunnableConfig, channels: Sequence[str]
    ) -> Mapping[str, DeltaChannelHistory]:
        return self.get_delta_channel_history(config=config, channels=channels)


Checkpointer = LoopSqliteSaver | AsyncPostgresSaver

# What AsyncPostgresSaver needs of every connection: it commits nothing itself, reads rows as
# dicts, and prepared statements break behind transaction-pooling proxies (PgBouncer).
_CONNECTION_KWARGS: dict[str, Any] = {
    "autocommit": True,
    "prepare_threshold": 0,
    "row_factory": dict_row,
}
_HEALTH_TIMEOUT_S = 3.0
_MAX_POOL_SIZE = 20
# Arbitrary but fixed: every replica of every qqrag deployment on a database agrees on it.
_SETUP_LOCK_ID = 0x7171_7261_6701


class CheckpointerError(RuntimeError):
    """The chosen checkpointer cannot start; the message is Chinese and names the setting."""


@asynccontextmanager
async def open_checkpointer(settings: Settings) -> AsyncIterator[Checkpointer]:
    """The checkpointer `settings.checkpointer` names, ready to use, closed on exit.

    Raises `CheckpointerError` when PostgreSQL is chosen but not configured or not reachable.
    """
    if settings.checkpointer == "sqlite":
        async with LoopSqliteSaver.open(settings.checkpoint_path) as saver:
            yield saver
        return
    url = settings.postgres_url.strip()
    if not url:
        raise CheckpointerError(
            "QQRAG_CHECKPOINTER=postgres 时必须设置 QQRAG_POSTGRES_URL"
            "（如 postgresql://qqrag:密码@db:5432/qqrag）"
        )
    try:
        await _setup(url, settings.postgres_timeout)
    except psycopg.Error as exc:
        raise CheckpointerError(
            f"检查点数据库 PostgreSQL 不可用（请检查 QQRAG_POSTGRES_URL）：{exc}"
        ) from exc
    async with AsyncConnectionPool[psycopg.AsyncConnection[DictRow]](
        url,
        min_size=1,
        max_size=_pool_size(settings),
        # Seconds, not the library's defaults (libpq waits for the operating system's TCP
        # timeout, the pool 30 s): a PostgreSQL outage must fail a turn within its deadline.
        timeout=settings.postgres_timeout,
        kwargs=_CONNECTION_KWARGS
        | {"connect_timeout": _connect_timeout(settings.postgres_timeout)},
        # A connection the server dropped (restart, idle timeout) is replaced, not handed out.
        check=AsyncConnectionPool.check_connection,
        open=False,
        name="qqrag-checkpoints",
    ) as pool:
        yield AsyncPostgresSaver(pool)


def _pool_size(settings: Settings) -> int:
    """Connections per process: about one per turn in flight, plus two for history reads.

    More waiting callers queue for a free connection rather than fail.
    """
    turns = settings.max_inflight_turns or _MAX_POOL_SIZE
    return min(turns + 2, _MAX_POOL_SIZE)


def _connect_timeout(seconds: float) -> int:
    # libpq takes whole seconds and treats anything under 2 as 2.
    return max(2, math.ceil(seconds))


async def _setup(url: str, connect_s: float) -> None:
    """Create or migrate the checkpoint tables, one replica at a time."""
    async with await psycopg.AsyncConnection.connect(
        url, connect_timeout=_connect_timeout(connect_s), **_CONNECTION_KWARGS
    ) as conn:
        # Replicas starting together would race on CREATE TABLE and the migrations table.
        await _lock_setup(conn)
        try:
            await AsyncPostgresSaver(conn).setup()
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (_SETUP_LOCK_ID,))


async def _lock_setup(conn: psycopg.AsyncConnection[DictRow]) -> None:
    # Polled, not waited for: the holder's CREATE INDEX CONCURRENTLY waits for every open
    # transaction, a blocked pg_advisory_lock() call included, which would deadlock.
    while True:
        cursor = await conn.execute("SELECT pg_try_advisory_lock(%s) AS locked", (_SETUP_LOCK_ID,))
        row = await cursor.fetchone()
        if row and row["locked"]:
            return
        await asyncio.sleep(0.1)


async def checkpointer_health(saver: Checkpointer) -> Health:
    """Up when the checkpoint database answers; down otherwise, since no turn can be kept."""
    probe = asyncio.create_task(_probe(saver))
    # Waited for in a task: a database that stopped answering holds a cancelled query for up
    # to 10 s while psycopg tries to cancel it on the server, and readiness must not hang.
    done, _ = await asyncio.wait({probe}, timeout=_HEALTH_TIMEOUT_S)
    if not done:
        probe.cancel()
        probe.add_done_callback(_ignore_outcome)
        return Health.down(f"检查点数据库 {_HEALTH_TIMEOUT_S:g} 秒内没有响应")
    if (exc := probe.exception()) is not None:
        return Health.down(f"检查点数据库不可用：{exc}")
    return Health.up()


def _ignore_outcome(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()


async def _probe(saver: Checkpointer) -> None:
    if isinstance(saver, LoopSqliteSaver):
        with saver.cursor(transaction=False) as cursor:
            cursor.execute("SELECT 1").fetchone()
    elif isinstance(saver.conn, AsyncConnectionPool):
        async with saver.conn.connection(timeout=_HEALTH_TIMEOUT_S) as conn:
            await conn.execute("SELECT 1")
    else:
        await saver.conn.execute("SELECT 1")
