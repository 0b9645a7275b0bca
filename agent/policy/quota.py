"""Per-user and per-group quotas: requests per minute and daily model tokens.

Rates are token buckets (capacity = requests per minute, refilled continuously), so a burst up
to the limit passes and then one request per 60/rpm seconds. `QuotaStore` decides; where the
counts live is its implementation's business: `SqliteQuotaStore` here keeps them in the file
the caller names, so restarts keep them and several processes sharing the file share one
quota; `RedisQuotaStore` (agent/policy/redis_store.py) shares them between replicas.
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import datetime, timedelta, timezone, tzinfo
from pathlib import Path
from typing import ClassVar, Literal

from tools.health import Health

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
class Subject:
    scope: Scope
    id: str
    rpm: int
    daily_tokens: int
    rpm_limit: LimitName
    daily_limit: LimitName


class QuotaStore(ABC):
    """Where quota state lives: SQLite (`SqliteQuotaStore`, one machine) or Redis
    (`RedisQuotaStore`, every replica). The limits, the subjects of a request, the calendar day
    and the decisions are the same for both; a store only keeps the counts."""

    shared: ClassVar[bool]
    """Whether replicas on other machines share this state (/readyz then reports its health)."""

    def __init__(self, limits: QuotaLimits, day_tz: tzinfo) -> None:
        self.limits = limits
        self._day_tz = day_tz

    def check_and_take(
        self, tenant: str, user_id: str, group_id: str | None, now: float | None = None
    ) -> QuotaDecision:
        """Admit one request or say why not; takes from the buckets only when admitted.

        Daily budgets are checked here and charged afterwards by `add_tokens`, so the turn
        that crosses a budget still finishes and the next one is refused.
        """
        now = time.time() if now is None else now
        refused = self._take(tenant, self._subjects(user_id, group_id), now, self._day(now))
        if refused is None:
            return ALLOWED
        subject, wait = refused
        if wait is None:
            return _refusal(subject.daily_limit, self._seconds_to_midnight(now))
        return _refusal(subject.rpm_limit, wait)

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
        self._charge(tenant, self._subjects(user_id, group_id), tokens, now, self._day(now))

    def used_today(
        self, tenant: str, scope: Scope, subject_id: str, now: float | None = None
    ) -> int:
        """Tokens charged today to one user or group."""
        now = time.time() if now is None else now
        return self._used(tenant, scope, subject_id, self._day(now))

    @abstractmethod
    async def health(self) -> Health: ...

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def _take(
        self, tenant: str, subjects: list[Subject], now: float, day: str
    ) -> tuple[Subject, int | None] | None:
        """Take one request from every subject's bucket, all or none.

        None when admitted; else the subject that refused and the seconds until its bucket
        has a request again, or None for the wait when its daily budget is spent.
        """

    @abstractmethod
    def _charge(
        self, tenant: str, subjects: list[Subject], tokens: int, now: float, day: str
    ) -> None: ...

    @abstractmethod
    def _used(self, tenant: str, scope: Scope, subject_id: str, day: str) -> int: ...

    def _subjects(self, user_id: str, group_id: str | None) -> list[Subject]:
        limits = self.limits
        subjects = [
            Subject(
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
                Subject(
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


class SqliteQuotaStore(QuotaStore):
    """Quota state in one SQLite file; safe from several threads and processes."""

    shared = False

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

    def _take(
        self, tenant: str, subjects: list[Subject], now: float, day: str
    ) -> tuple[Subject, int | None] | None:
        with self._transaction(now) as conn:
            for subject in subjects:
                if subject.daily_tokens and (
                    _spent(conn, tenant, subject, day) >= subject.daily_tokens
                ):
                    return subject, None
            refusals: list[tuple[int, Subject]] = []
            levels: list[tuple[Subject, float]] = []
            for subject in subjects:
                if not subject.rpm:
                    continue
                level = _bucket_level(conn, tenant, subject, now)
                if level < 1:
                    refusals.append((math.ceil((1 - level) * 60 / subject.rpm), subject))
                levels.append((subject, level))
            if refusals:
                # The longest wait wins; the user, listed first, wins ties.
                wait, subject = max(refusals, key=lambda refusal: refusal[0])
                return subject, wait
            for subject, level in levels:
                conn.execute(
                    "INSERT INTO rate_buckets VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT (tenant, scope, subject) DO UPDATE SET tokens = excluded.tokens, "
                    "updated_at = excluded.updated_at",
                    (tenant, subject.scope, subject.id, level - 1, now),
                )
        return None

    def _charge(
        self, tenant: str, subjects: list[Subject], tokens: int, now: float, day: str
    ) -> None:
        with self._transaction(now) as conn:
            for subject in subjects:
                conn.execute(
                    "INSERT INTO daily_tokens VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT (tenant, scope, subject, day) "
                    "DO UPDATE SET tokens = tokens + excluded.tokens",
                    (tenant, subject.scope, subject.id, day, tokens),
                )

    def _used(self, tenant: str, scope: Scope, subject_id: str, day: str) -> int:
        with self._lock:
            row = self._conn.execute(
                "SELECT tokens FROM daily_tokens "
                "WHERE tenant = ? AND scope = ? AND subject = ? AND day = ?",
                (tenant, scope, subject_id, day),
            ).fetchone()
        return int(row[0]) if row else 0

    async def health(self) -> Health:
        """Up while the file takes writes; down otherwise, since every turn writes to it."""
        try:
            await asyncio.to_thread(self._try_write)
        except sqlite3.Error as exc:
            return Health.down(
                f"配额数据库无法写入：{exc}", "检查 QQRAG_DATA_DIR 所在磁盘的空间和权限"
            )
        return Health.up()

    def close(self) -> None:
        self._conn.close()

    def _try_write(self) -> None:
        # Taking the write lock and rolling back proves writes would pass, changing nothing.
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.execute("ROLLBACK")

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


def _spent(conn: sqlite3.Connection, tenant: str, subject: Subject, day: str) -> int:
    row = conn.execute(
        "SELECT tokens FROM daily_tokens WHERE tenant = ? AND scope = ? AND subject = ? AND day = ?",
        (tenant, subject.scope, subject.id, day),
    ).fetchone()
    return int(row[0]) if row else 0


def _bucket_level(conn: sqlite3.Connection, tenant: str, subject: Subject, now: float) -> float:
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
