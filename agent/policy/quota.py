"""Per-user and per-group quotas: requests per minute and daily model tokens, kept in SQLite.

Rates are token buckets (capacity = requests per minute, refilled continuously), so a burst up
to the limit passes and then one request per 60/rpm seconds. State lives in the file the caller
names, so restarts keep it and several processes sharing the file share one quota.
"""

from __future__ import annotations

import math
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import datetime, timedelta, timezone, tzinfo
from pathlib import Path
from typing import Literal

Scope = Literal["user", "group"]
LimitName = Literal["user_rpm", "group_rpm", "user_daily", "group_daily"]

CHINA_TZ = timezone(timedelta(hours=8), "Asia/Shanghai")
"""Where a "day" of the daily budgets starts and ends by default: midnight in China."""

_MESSAGES: dict[LimitName, str] = {
    "user_rpm": "你提问太频繁了，请 {seconds} 秒后再试。",
    "group_rpm": "本群提问太频繁了，请 {seconds} 秒后再试。",
    "user_daily": "你今天的额度已用完，明天再来吧。",
    "group_daily": "本群今天的额度已用完，明天再来吧。",
}
# An idle bucket is full again after 60 s whatever its rate, so older rows equal no row.
_BUCKET_FULL_AFTER_S = 60.0
_SWEEP_EVERY_S = 600.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rate_buckets (
    tenant TEXT NOT NULL, scope TEXT NOT NULL, subject TEXT NOT NULL,
    tokens REAL NOT NULL, updated_at REAL NOT NULL,
    PRIMARY KEY (tenant, scope, subject)
);
CREATE TABLE IF NOT EXISTS daily_tokens (
    tenant TEXT NOT NULL, scope TEXT NOT NULL, subject TEXT NOT NULL, day TEXT NOT NULL,
    tokens INTEGER NOT NULL,
    PRIMARY KEY (tenant, scope, subject, day)
);
"""


@dataclass(frozen=True, slots=True)
class QuotaLimits:
    """Limits per tenant's user and group; 0 means unlimited."""

    user_rpm: int = 0
    group_rpm: int = 0
    user_daily_tokens: int = 0
    group_daily_tokens: int = 0

    def __post_init__(self) -> None:
        for field in fields(self):
            if getattr(self, field.name) < 0:
                raise ValueError(f"{field.name} must be 0 (unlimited) or more")


@dataclass(frozen=True, slots=True)
class QuotaDecision:
    allowed: bool
    retry_after: int = 0
    """Seconds until a retry can pass (≥ 1 when refused): the HTTP Retry-After value."""
    message: str = ""
    """Chinese text the bot can show as is; empty when allowed."""
    limit: LimitName | None = None
    """Which limit refused the request."""


ALLOWED = QuotaDecision(allowed=True)


@dataclass(frozen=True, slots=True)
class _Subject:
    scope: Scope
    id: str
    rpm: int
    daily_tokens: int
    rpm_limit: LimitName
    daily_limit: LimitName


class QuotaRules:
    """What both quota stores (SQLite here, Redis for replicas) count against, and when a day
    ends: the limits, the subjects of a request, the local calendar day."""

    def __init__(self, limits: QuotaLimits, day_tz: tzinfo) -> None:
        self.limits = limits
        self._day_tz = day_tz

    def _subjects(self, user_id: str, group_id: str | None) -> list[_Subject]:
        limits = self.limits
        subjects = [
            _Subject(
                "user",
                user_id,
                limits.user_rpm,
                limits.user_daily_tokens,
                "user_rpm",
                "user_daily",
            )
        ]
        if group_id:
            subjects.append(
                _Subject(
                    "group",
                    group_id,
                    limits.group_rpm,
                    limits.group_daily_tokens,
                    "group_rpm",
                    "group_daily",
                )
            )
        return subjects

    def _day(self, now: float) -> str:
        return datetime.fromtimestamp(now, self._day_tz).date().isoformat()

    def _seconds_to_midnight(self, now: float) -> int:
        today = datetime.fromtimestamp(now, self._day_tz).date()
        midnight = datetime.combine(today + timedelta(days=1), datetime.min.time(), self._day_tz)
        return max(1, math.ceil(midnight.timestamp() - now))


class QuotaStore(QuotaRules):
    """Quota state in one SQLite file; safe from several threads and processes."""

    def __init__(self, path: Path | str, limits: QuotaLimits, *, day_tz: tzinfo = CHINA_TZ) -> None:
        super().__init__(limits, day_tz)
        self._conn = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=10
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._last_sweep = -math.inf

    def check_and_take(
        self, tenant: str, user_id: str, group_id: str | None, now: float | None = None
    ) -> QuotaDecision:
        """Admit one request or say why not; takes from the buckets only when admitted.

        Daily budgets are checked here and charged afterwards by `add_tokens`, so the turn
        that crosses a budget still finishes and the next one is refused.
        """
        now = time.time() if now is None else now
        day = self._day(now)
        subjects = self._subjects(user_id, group_id)
        with self._transaction(now) as conn:
            for subject in subjects:
                if subject.daily_tokens and (
                    _used(conn, tenant, subject, day) >= subject.daily_tokens
                ):
                    return _refusal(subject.daily_limit, self._seconds_to_midnight(now))
            refusals: list[tuple[int, LimitName]] = []
            levels: list[tuple[_Subject, float]] = []
            for subject in subjects:
                if not subject.rpm:
                    continue
                level = _bucket_level(conn, tenant, subject, now)
                if level < 1:
                    wait = math.ceil((1 - level) * 60 / subject.rpm)
                    refusals.append((wait, subject.rpm_limit))
                levels.append((subject, level))
            if refusals:
                wait, limit = max(refusals)
                return _refusal(limit, wait)
            for subject, level in levels:
                conn.execute(
                    "INSERT INTO rate_buckets VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT (tenant, scope, subject) DO UPDATE SET tokens = excluded.tokens, "
                    "updated_at = excluded.updated_at",
                    (tenant, subject.scope, subject.id, level - 1, now),
                )
        return ALLOWED

    def add_tokens(
        self,
        tenant: str,
        user_id: str,
        group_id: str | None,
        tokens: int,
        now: float | None = None,
    ) -> None:
        """Charge a finished turn's model tokens (prompt + completion) to today's budgets."""
        if tokens <= 0:
            return
        now = time.time() if now is None else now
        day = self._day(now)
        with self._transaction(now) as conn:
            for subject in self._subjects(user_id, group_id):
                conn.execute(
                    "INSERT INTO daily_tokens VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT (tenant, scope, subject, day) "
                    "DO UPDATE SET tokens = tokens + excluded.tokens",
                    (tenant, subject.scope, subject.id, day, tokens),
                )

    def used_today(
        self, tenant: str, scope: Scope, subject_id: str, now: float | None = None
    ) -> int:
        """Tokens charged today to one user or group."""
        now = time.time() if now is None else now
        with self._lock:
            row = self._conn.execute(
                "SELECT tokens FROM daily_tokens "
                "WHERE tenant = ? AND scope = ? AND subject = ? AND day = ?",
                (tenant, scope, subject_id, self._day(now)),
            ).fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        self._conn.close()

    @contextmanager
    def _transaction(self, now: float) -> Iterator[sqlite3.Connection]:
        # BEGIN IMMEDIATE takes the file's write lock before reading, so a read-modify-write
        # in another process waits instead of interleaving.
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._sweep(now)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _sweep(self, now: float) -> None:
        if now - self._last_sweep < _SWEEP_EVERY_S:
            return
        self._last_sweep = now
        self._conn.execute("DELETE FROM daily_tokens WHERE day < ?", (self._day(now),))
        self._conn.execute(
            "DELETE FROM rate_buckets WHERE updated_at < ?", (now - _BUCKET_FULL_AFTER_S,)
        )


def _used(conn: sqlite3.Connection, tenant: str, subject: _Subject, day: str) -> int:
    row = conn.execute(
        "SELECT tokens FROM daily_tokens WHERE tenant = ? AND scope = ? AND subject = ? AND day = ?",
        (tenant, subject.scope, subject.id, day),
    ).fetchone()
    return int(row[0]) if row else 0


def _bucket_level(conn: sqlite3.Connection, tenant: str, subject: _Subject, now: float) -> float:
    row = conn.execute(
        "SELECT tokens, updated_at FROM rate_buckets "
        "WHERE tenant = ? AND scope = ? AND subject = ?",
        (tenant, subject.scope, subject.id),
    ).fetchone()
    if row is None:
        return float(subject.rpm)
    tokens, updated_at = row
    # Multiplying before dividing keeps whole refills exact (20 s at 3 rpm is 1.0, not 0.999…).
    refill = max(0.0, now - updated_at) * subject.rpm / 60
    return float(min(subject.rpm, tokens + refill))


def _refusal(limit: LimitName, seconds: int) -> QuotaDecision:
    seconds = max(1, seconds)
    return QuotaDecision(
        allowed=False,
        retry_after=seconds,
        message=_MESSAGES[limit].format(seconds=seconds),
        limit=limit,
    )
