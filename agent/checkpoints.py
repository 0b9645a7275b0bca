"""Where conversations (LangGraph checkpoints) are kept: a SQLite file for one process, or
PostgreSQL shared by several replicas.

Several processes writing one SQLite checkpoint file fail with "database is locked", so a
deployment with more than one replica needs `QQRAG_CHECKPOINTER=postgres`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool

from agent.settings import Settings

Checkpointer = AsyncSqliteSaver | AsyncPostgresSaver

# What AsyncPostgresSaver needs of every connection: it commits nothing itself, reads rows as
# dicts, and prepared statements break behind transaction-pooling proxies (PgBouncer).
_CONNECTION_KWARGS: dict[str, Any] = {
    "autocommit": True,
    "prepare_threshold": 0,
    "row_factory": dict_row,
}
_CONNECT_TIMEOUT_S = 5
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
        async with AsyncSqliteSaver.from_conn_string(str(settings.checkpoint_path)) as saver:
            await saver.setup()
            # WAL with synchronous=NORMAL still commits each turn atomically (whole or absent
            # after a crash); it skips an fsync per commit, which serialised writes under load.
            await saver.conn.execute("PRAGMA synchronous=NORMAL")
            yield saver
        return
    url = settings.postgres_url.strip()
    if not url:
        raise CheckpointerError(
            "QQRAG_CHECKPOINTER=postgres 时必须设置 QQRAG_POSTGRES_URL"
            "（如 postgresql://qqrag:密码@db:5432/qqrag）"
        )
    try:
        await _setup(url)
    except psycopg.Error as exc:
        raise CheckpointerError(
            f"检查点数据库 PostgreSQL 不可用（请检查 QQRAG_POSTGRES_URL）：{exc}"
        ) from exc
    async with AsyncConnectionPool[psycopg.AsyncConnection[DictRow]](
        url,
        min_size=1,
        max_size=_pool_size(settings),
        kwargs=_CONNECTION_KWARGS,
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


async def _setup(url: str) -> None:
    """Create or migrate the checkpoint tables, one replica at a time."""
    async with await psycopg.AsyncConnection.connect(
        url, connect_timeout=_CONNECT_TIMEOUT_S, **_CONNECTION_KWARGS
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


async def checkpointer_health(saver: Checkpointer) -> str | None:
    """None when the checkpoint database answers, else a Chinese reason for /readyz."""
    try:
        if isinstance(saver, AsyncSqliteSaver):
            async with saver.conn.execute("SELECT 1") as cursor:
                await cursor.fetchone()
        elif isinstance(saver.conn, AsyncConnectionPool):
            async with saver.conn.connection(timeout=_HEALTH_TIMEOUT_S) as conn:
                await conn.execute("SELECT 1")
        else:
            await saver.conn.execute("SELECT 1")
    except Exception as exc:
        return f"检查点数据库不可用：{exc}"
    return None
