from datetime import UTC, datetime

from agent.activity import buckets, total, window_start


def minute(at: str, turns: int, **more: object) -> dict[str, object]:
    row = {"minute": at, "turns": turns, "degraded": 0, "failed": 0, "seconds": 0.0}
    return row | {"max_seconds": 0.0, "tokens": 0, "refusals": {}} | more


def test_minutes_fold_into_buckets_on_boundaries_and_quiet_buckets_count_as_zero():
    now = datetime(2026, 1, 1, 12, 7, 30, tzinfo=UTC)
    start = window_start(now, hours=1, bucket_minutes=5)
    assert start == datetime(2026, 1, 1, 11, 5, tzinfo=UTC)
    rows = [
        minute("2026-01-01T11:05", 2, degraded=1, seconds=3.0, max_seconds=2.0, tokens=40),
        minute("2026-01-01T11:09", 1, seconds=1.0, max_seconds=1.0, refusals={"busy": 2}),
        minute("2026-01-01T12:06", 0, refusals={"quota_exceeded": 1, "conversation_busy": 1}),
        minute("2026-01-01T10:00", 9),  # before the window: left out
    ]
    series = buckets(rows, start=start, now=now, bucket_minutes=5)
    assert len(series) == 13 and series[-1].start == datetime(2026, 1, 1, 12, 5, tzinfo=UTC)
    first = series[0]
    assert (first.turns, first.degraded, first.tokens, first.busy) == (3, 1, 40, 2)
    assert (first.mean_seconds, first.max_seconds) == (4.0 / 3, 2.0)
    assert [b.turns for b in series[1:]] == [0] * 12
    assert (series[-1].busy, series[-1].quota) == (1, 1)
    whole = total(series)
    assert (whole.turns, whole.busy, whole.quota, whole.max_seconds) == (3, 3, 1, 2.0)
    assert series[0].as_json()["mean_seconds"] == 1.3333
