"""Which conversation a message belongs to, and one turn at a time per conversation."""

from __future__ import annotations

import asyncio
import fcntl
import os
import time
import zlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Literal, Protocol

from tools.health import Health


def thread_id(
    platform: str,
    scene: Literal["group", "private"],
    user_id: str,
    group_id: str | None = None,
    scope: Literal["member", "group"] = "member",
) -> str:
    """`qq:group:G:U` per member in a group (or `qq:group:G` per group), `qq:private:U`.

    One id per speaker and place, never shared: a `:` (or `%`) inside a part is escaped, so
    group `1:2` with user `3` and group `1` with user `2:3` stay two conversations.
    """
    platform, user_id = _part(platform), _part(user_id)
    if scene == "private":
        return f"{platform}:private:{user_id}"
    if scope == "group":
        return f"{platform}:group:{_part(group_id or '')}"
    return f"{platform}:group:{_part(group_id or '')}:{user_id}"


def _part(value: str) -> str:
    return value.replace("%", "%25").replace(":", "%3A")


def _unpart(value: str) -> str:
    return value.replace("%3A", ":").replace("%25", "%")


def speaker_of(thread: str) -> dict[str, str | None]:
    """The tenant, platform, scene, group and user a `租户:thread_id` conversation id names
    (None where it names none: a whole group's thread, a private chat's group)."""
    tenant, platform, scene, *rest = [*thread.split(":"), "", "", "", ""][:5]
    group = rest[0] if scene == "group" else None
    user = rest[1] if scene == "group" else rest[0]
    return {
        "tenant": tenant,
        "platform": platform,
        "scene": scene,
        "group_id": _unpart(group) if group else None,
        "user_id": _unpart(user) if user else None,
    }


class ConversationBusy(Exception):
    """More messages of one conversation are already waiting than the bound allows."""


class KeyedLocks:
    """An asyncio lock per key, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(
        self, key: str, *, max_waiting: int | None = None, wait_s: float | None = None
    ) -> AsyncIterator[None]:
        """Held alone for the body. Raises `ConversationBusy` at once when `max_waiting` others
        already wait for `key`, `TimeoutError` when not acquired within `wait_s` seconds."""
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        # Of `users`, one holds the lock (or is being handed it); the rest wait.
        if max_waiting is not None and users > max_waiting:
            raise ConversationBusy(key)
        self._locks[key] = (lock, users + 1)
        try:
            async with asyncio.timeout(wait_s):
                await lock.acquire()
            try:
                yield
            finally:
                lock.release()
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)

    async def health(self) -> Health:
        return Health.up()

    def close(self) -> None:
        """Nothing to release: the locks live in this process only."""


@asynccontextmanager
async def one_process_at_a_time(path: Path) -> AsyncIterator[None]:
    """Held by one process at a time on this machine (flock on `path`), released on exit or
    when the holder dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as file:
        await asyncio.to_thread(fcntl.flock, file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(file, fcntl.LOCK_UN)


async def poll(attempt: Callable[[], bool]) -> None:
    """Until `attempt()` succeeds, waiting 2 ms after the first failure, then twice as long each
    time up to 50 ms: for locks held by another process, which no event can announce here.
    Exceptions from `attempt` propagate."""
    wait = 0.002
    while not attempt():
        await asyncio.sleep(wait)
        wait = min(wait * 2, 0.05)


def wait_until(wait_s: float | None) -> float | None:
    return None if wait_s is None else time.monotonic() + wait_s


def time_left(until: float | None) -> float | None:
    """Seconds left before `until` (from `wait_until`), for a wait made of several steps."""
    return None if until is None else max(0.0, until - time.monotonic())


class ThreadLocks(Protocol):
    """One turn at a time per conversation: `KeyedLocks` within a process, `FileKeyedLocks`
    across the processes of one machine, `RedisThreadLocks` (agent/policy/redis_store.py)
    across replicas."""

    def hold(
        self, key: str, *, max_waiting: int | None = None, wait_s: float | None = None
    ) -> AbstractAsyncContextManager[None]:
        """One holder per key at a time. `max_waiting`: how many may wait for a key (within
        this process); past it `ConversationBusy` is raised at once. `wait_s`: the longest
        wait before `TimeoutError`."""
        ...

    async def health(self) -> Health: ...

    def close(self) -> None: ...


class FileKeyedLocks:
    """One turn at a time per key across every process on this machine that shares `path`.

    Worker processes of one service (`QQRAG_WORKERS`) share a data folder, and two messages of
    one conversation may reach two workers: each would read the same checkpoint and the later
    write would drop the other's turn. Each key hashes to one byte of a lock file, locked with
    fcntl; the operating system drops the lock of a process that dies, so a crash never leaves a
    conversation stuck. fcntl locks belong to a process, not a task, so tasks of one process take
    an asyncio lock per byte first. Unrelated keys sharing a byte only wait for each other.
    """

    SLOTS = 1 << 20

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        self._local = KeyedLocks()

    def slot(self, key: str) -> int:
        return zlib.crc32(key.encode()) % self.SLOTS

    @asynccontextmanager
    async def hold(
        self, key: str, *, max_waiting: int | None = None, wait_s: float | None = None
    ) -> AsyncIterator[None]:
        slot = self.slot(key)
        until = wait_until(wait_s)
        async with self._local.hold(str(slot), max_waiting=max_waiting, wait_s=wait_s):
            # Polled rather than blocking: a blocked fcntl call would stall the event loop, and
            # the same conversation in two processes at once is rare and brief.
            async with asyncio.timeout(time_left(until)):
                await poll(lambda: self._try_lock(slot))
            try:
                yield
            finally:
                fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, slot)

    def _try_lock(self, slot: int) -> bool:
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, slot)
        except (BlockingIOError, PermissionError):
            return False
        return True

    async def health(self) -> Health:
        return Health.up()

    def close(self) -> None:
        os.close(self._fd)
