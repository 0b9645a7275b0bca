"""Admission control: a bound on turns in flight toward the model server, refusing past it.

Refusing at once (no queue) keeps latency honest under overload: a queued QQ message would be
answered long after its sender gave up. `LocalAdmission` bounds one process;
`RedisAdmission` (agent/policy/redis_store.py) every process sharing a Redis.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from tools.health import Health


class Admission(ABC):
    """At most `limit` turns at a time; 0 means unlimited."""

    def __init__(self, limit: int) -> None:
        if limit < 0:
            raise ValueError("limit must be 0 (unlimited) or more")
        self.limit = limit

    @property
    @abstractmethod
    def in_flight(self) -> int:
        """Turns holding a slot now."""

    @abstractmethod
    def try_enter(self) -> bool:
        """Take a slot if one is free; every True must be paired with one `leave()`."""

    @abstractmethod
    def leave(self) -> None: ...

    @abstractmethod
    async def health(self) -> Health: ...

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[bool]:
        """`async with admission.slot() as ok:` ok is False when full; the slot is freed on exit."""
        entered = self.try_enter()
        try:
            yield entered
        finally:
            if entered:
                self.leave()


class LocalAdmission(Admission):
    """The bound within this process."""

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self._in_flight = 0
        # Turns run on the event loop, but a lock keeps the count right from worker threads too;
        # it is held for a compare and an increment only, never across an await.
        self._lock = threading.Lock()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def try_enter(self) -> bool:
        with self._lock:
            if self.limit and self._in_flight >= self.limit:
                return False
            self._in_flight += 1
            return True

    def leave(self) -> None:
        with self._lock:
            if self._in_flight == 0:
                raise RuntimeError("leave() without a matching try_enter()")
            self._in_flight -= 1

    async def health(self) -> Health:
        return Health.up()
