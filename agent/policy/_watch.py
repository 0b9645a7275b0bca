"""A value loaded from files and reloaded, on use, once they change."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Generic, TypeVar

T = TypeVar("T")

log = logging.getLogger("qqrag.policy")


class Watched(Generic[T]):
    """Holds what `load()` built from `path`; looks again at most once per `check_interval`.

    `signature()` is cheap (names, mtimes, sizes) and None when the path is missing; a changed
    signature triggers `load()`. A missing path gives `missing()`; a load raising one of `errors`
    keeps the previous value and is logged once per change. The new value is built beside the
    old and replaces it in one assignment, so readers never see a half-built one.
    """

    def __init__(
        self,
        what: str,
        path: Path,
        *,
        signature: Callable[[], Hashable | None],
        load: Callable[[], T],
        missing: Callable[[], T],
        errors: tuple[type[Exception], ...],
        check_interval: float,
        clock: Callable[[], float],
        missing_level: int = logging.WARNING,
    ) -> None:
        self._what, self._path = what, path
        self._signature_of, self._load, self._missing, self._errors = (
            signature,
            load,
            missing,
            errors,
        )
        self._check_interval, self._clock = check_interval, clock
        self._missing_level = missing_level
        self._lock = threading.Lock()
        self._next_check = clock() + check_interval
        self._signature = signature()
        self._value = missing()
        self._rebuild(changed=True)

    @property
    def value(self) -> T:
        if self._clock() >= self._next_check and self._lock.acquire(blocking=False):
            # A thread finding the lock taken uses the current value rather than wait.
            try:
                self._next_check = self._clock() + self._check_interval
                signature = self._signature_of()
                if signature != self._signature:
                    self._signature = signature
                    self._rebuild(changed=True)
            finally:
                self._lock.release()
        return self._value

    def reload(self) -> bool:
        """Load now, changed or not; False when the path is missing or the load failed."""
        with self._lock:
            self._next_check = self._clock() + self._check_interval
            signature = self._signature_of()
            changed, self._signature = signature != self._signature, signature
            return self._rebuild(changed=changed)

    def _rebuild(self, *, changed: bool) -> bool:
        if self._signature is None:
            self._value = self._missing()
            if changed:
                log.log(
                    self._missing_level,
                    "%s: nothing at %s, using the built-in default",
                    self._what,
                    self._path,
                )
            return False
        try:
            value = self._load()
        except self._errors as error:
            log.error(
                "%s: %s not loaded, keeping the previous one: %s", self._what, self._path, error
            )
            return False
        self._value = value
        log.info("%s: loaded %s", self._what, self._path)
        return True
