"""Which conversation a message belongs to, and one turn at a time per conversation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Literal


def thread_id(
    platform: str,
    scene: Literal["group", "private"],
    user_id: str,
    group_id: str | None = None,
    scope: Literal["member", "group"] = "member",
) -> str:
    """`qq:group:G:U` per member in a group (or `qq:group:G` per group), `qq:private:U`."""
    if scene == "private":
        return f"{platform}:private:{user_id}"
    if scope == "group":
        return f"{platform}:group:{group_id}"
    return f"{platform}:group:{group_id}:{user_id}"


class KeyedLocks:
    """An asyncio lock per key, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)
