"""A value loaded from files and reloaded, on use, once they change."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import ClassVar, Generic, TypeVar

T = TypeVar("T")

log = logging.getLogger("qqrag.policy")


class Watched(Generic[T]):
    """Holds what `load()` built from `path`; looks again at most once per `check_interval`.

    A subclass says what it watches: `signature()` is cheap (names, mtimes, sizes) and None when
    the path is missing; a changed signature triggers `load()`. A missing path gives `missing()`;
    a load raising one of `errors` keeps the previous value and is logged once per change. The
    new value is built beside the old and replaces it in one assignment, so readers never see a
    half-built one.
    """

    what: ClassVar[str]
    """Named in the log lines."""
    errors: ClassVar[tuple[type[Exception], ...]]
    """What a failed load raises: caught and logged, never raised to a reader."""
    missing_level: ClassVar[int] = logging.WARNING
    when_missing: ClassVar[str] = "using the built-in default"
    """What a missing path means, for the log line."""

    def __init__(
        self,
        path: Path | str,
        *,
        check_interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = Path(path)
        self._check_interval, self._clock = check_interval, clock
        self._lock = threading.Lock()
        self._next_check = clock() + check_interval
        self._seen = self.signature()
        self._value = self.missing()
        self._rebuild(changed=True)

    def signature(self) -> Hashable | None:
        raise NotImplementedError

    def load(self) -> T:
        raise NotImplementedError

    def missing(self) -> T:
        raise NotImplementedError

    @property
    def value(self) -> T:
        if self._clock() >= self._next_check and self._lock.acquire(blocking=False):
            # A thread finding the lock taken uses the current value rather than wait.
            try:
                self._next_check = self._clock() + self._check_interval
                signature = self.signature()
                if signature != self._seen:
                    self._seen = signature
                    self._rebuild(changed=True)
            finally:
                self._lock.release()
        return self._value

    def reload(self) -> bool:
        """Load now, changed or not; False when the path is missing or the load failed."""
        with self._lock:
            self._next_check = self._clock() + self._check_interval
            signature = self.signature()
            changed, self._seen = signature != self._seen, signature
            return self._rebuild(changed=changed)

    def _rebuild(self, *, changed: bool) -> bool:
        if self._seen is None:
            self._value = self.missing()
            if changed:
                log.log(
                    self.missing_level,
                    "%s: nothing at %s, %s",
                    self.what,
                    self.path,
                    self.when_missing,
                )
            return False
        try:
            value = self.load()
        except self.errors as error:
            log.error(
                "%s: %s not loaded, keeping the previous one: %s", self.what, self.path, error
            )
            return False
        self._value = value
        log.info("%s: loaded %s", self.what, self.path)
        return True
