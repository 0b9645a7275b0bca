"""The service's activity over the last hours, in buckets of a few minutes: what the console's
charts show, read from the audit log (`AuditLog.minutes`), so it survives restarts and every
worker's turns count, with no Prometheus needed."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

BUSY_CODES = frozenset({"busy", "conversation_busy"})
QUOTA_CODES = frozenset({"quota_exceeded"})


@dataclass
class Bucket:
    """The turns that finished (and the refusals) from `start` for the bucket's minutes."""

    start: datetime
    turns: int = 0
    degraded: int = 0
    failed: int = 0
    """Turns that ended in an error or at the turn deadline."""
    seconds: float = 0.0
    """Summed over the turns: `mean_seconds` divides."""
    max_seconds: float = 0.0
    tokens: int = 0
    refusals: dict[str, int] = field(default_factory=dict)

    @property
    def mean_seconds(self) -> float:
        return self.seconds / self.turns if self.turns else 0.0

    @property
    def busy(self) -> int:
        return sum(n for code, n in self.refusals.items() if code in BUSY_CODES)

    @property
    def quota(self) -> int:
        return sum(n for code, n in self.refusals.items() if code in QUOTA_CODES)

    def add(self, minute: dict[str, Any]) -> None:
        self.turns += minute["turns"]
        self.degraded += minute["degraded"] or 0
        self.failed += minute["failed"] or 0
        self.seconds += minute["seconds"] or 0.0
        self.max_seconds = max(self.max_seconds, minute["max_seconds"] or 0.0)
        self.tokens += minute["tokens"] or 0
        for code, count in minute["refusals"].items():
            self.refusals[code] = self.refusals.get(code, 0) + count

    def as_json(self) -> dict[str, Any]:
        shown = asdict(self)
        shown["start"] = self.start.isoformat()
        shown["seconds"] = round(self.seconds, 4)
        shown["mean_seconds"] = round(self.mean_seconds, 4)
        shown["busy"] = self.busy
        shown["quota"] = self.quota
        return shown


def window_start(now: datetime, hours: int, bucket_minutes: int) -> datetime:
    """The first bucket's start: `hours` before `now`, on a bucket boundary, so the buckets
    of two reads a minute apart line up."""
    start = now.replace(second=0, microsecond=0) - timedelta(hours=hours)
    return start - timedelta(minutes=start.minute % bucket_minutes)


def buckets(
    minutes: Iterable[dict[str, Any]], *, start: datetime, now: datetime, bucket_minutes: int
) -> list[Bucket]:
    """Every bucket from `start` to `now`, the empty ones too (a chart shows quiet as zero),
    filled from `AuditLog.minutes` rows."""
    width = timedelta(minutes=bucket_minutes)
    series = []
    at = start
    while at <= now:
        series.append(Bucket(at))
        at += width
    for minute in minutes:
        when = datetime.fromisoformat(minute["minute"]).replace(tzinfo=start.tzinfo)
        index = int((when - start) / width)
        if 0 <= index < len(series):
            series[index].add(minute)
    return series


def total(series: list[Bucket]) -> Bucket:
    """The whole window as one bucket; `series` is never empty (`buckets` gives at least one)."""
    whole = Bucket(series[0].start)
    for bucket in series:
        whole.add(asdict(bucket))
    return whole
