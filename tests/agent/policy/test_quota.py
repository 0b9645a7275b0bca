"""Every quota store (SQLite, and Redis when reachable) keeps the same quotas: one suite run over
each, then what only the SQLite file does. Redis-only behaviour is in test_redis_store.py.

The Redis runs are skipped when Redis is not reachable (QQRAG_TEST_REDIS_URL, default
redis://127.0.0.1:6379/0), failed instead when QQRAG_REQUIRE_SCALE_OUT=1.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest

from agent.policy.quota import ALLOWED, CHINA_TZ, QuotaLimits, QuotaStore, SqliteQuotaStore
from agent.policy.redis_store import RedisQuotaStore, connect_redis
from tests.conftest import REDIS_URL
from tools.health import Health

# 10:00 in China: 14 hours before midnight.
T0 = datetime(2025, 3, 1, 10, 0, tzinfo=CHINA_TZ).timestamp()
MIDNIGHT = datetime(2025, 3, 2, 0, 0, tzinfo=CHINA_TZ).timestamp()

OpenStore = Callable[..., QuotaStore]


@pytest.fixture(params=["sqlite", "redis"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenStore]:
    """Opens stores with the given limits, all on one state (one file, or one Redis prefix),
    each with its own connection as separate processes would have; closed afterwards."""
    stores: list[QuotaStore] = []

    def remember(store: QuotaStore) -> QuotaStore:
        stores.append(store)
        return store

    if request.param == "sqlite":
        path = tmp_path / "quota.sqlite"
        yield lambda **limits: remember(SqliteQuotaStore(path, QuotaLimits(**limits)))
    else:
        prefix = request.getfixturevalue("redis_space")
        yield lambda **limits: remember(
            RedisQuotaStore(connect_redis(REDIS_URL), QuotaLimits(**limits), prefix=prefix)
        )
    for store in stores:
        store.close()


def test_user_bucket_exhausts_and_refills_with_time(open_store: OpenStore):
    quota = open_store(user_rpm=3)

    assert [quota.check_and_take("t", "u", None, now=T0).allowed for _ in range(3)] == [True] * 3
    refused = quota.check_and_take("t", "u", None, now=T0)

    assert not refused.allowed
    assert refused.limit == "user_rpm"
    # 3 per minute: one request back every 20 s.
    assert refused.retry_after == 20
    assert refused.message == "你提问太频繁了，请 20 秒后再试。"
    assert quota.check_and_take("t", "u", None, now=T0 + 15).retry_after == 5
    assert quota.check_and_take("t", "u", None, now=T0 + 19.5).retry_after == 1
    assert quota.check_and_take("t", "u", None, now=T0 + 20) == ALLOWED
    assert not quota.check_and_take("t", "u", None, now=T0 + 20).allowed
    # A long pause refills to the capacity, not beyond.
    assert [quota.check_and_take("t", "u", None, now=T0 + 3600).allowed for _ in range(4)] == [
        True,
        True,
        True,
        False,
    ]


def test_users_groups_and_tenants_are_counted_apart(open_store: OpenStore):
    quota = open_store(user_rpm=2, group_rpm=3)

    assert quota.check_and_take("t", "alice", "g1", now=T0).allowed
    assert quota.check_and_take("t", "alice", "g1", now=T0).allowed
    alice = quota.check_and_take("t", "alice", "g1", now=T0)
    assert (alice.allowed, alice.limit) == (False, "user_rpm")

    assert quota.check_and_take("t", "bob", "g1", now=T0).allowed
    group = quota.check_and_take("t", "carol", "g1", now=T0)
    assert (group.allowed, group.limit, group.retry_after) == (False, "group_rpm", 20)
    assert group.message == "本群提问太频繁了，请 20 秒后再试。"

    # Refused requests took nothing: carol's own bucket is full, in another group and in private.
    assert quota.check_and_take("t", "carol", "g2", now=T0).allowed
    assert quota.check_and_take("t", "carol", None, now=T0).allowed
    assert quota.check_and_take("other", "alice", "g1", now=T0).allowed
    # Ids may hold the key separator without reaching into someone else's bucket.
    assert quota.check_and_take("t", "rate:user:alice", None, now=T0).allowed


def test_the_longer_wait_is_reported_when_both_buckets_are_empty(open_store: OpenStore):
    quota = open_store(user_rpm=1, group_rpm=2)
    assert quota.check_and_take("t", "u", "g", now=T0).allowed
    assert quota.check_and_take("t", "v", "g", now=T0).allowed

    decision = quota.check_and_take("t", "u", "g", now=T0 + 10)

    # The user's bucket needs 50 s more, the group's 20 s.
    assert (decision.limit, decision.retry_after) == ("user_rpm", 50)


def test_zero_means_unlimited(open_store: OpenStore):
    quota = open_store()
    assert all(quota.check_and_take("t", "u", "g", now=T0).allowed for _ in range(1000))
    with pytest.raises(ValueError, match="user_rpm"):
        QuotaLimits(user_rpm=-1)


def test_buckets_survive_a_restart(open_store: OpenStore):
    first = open_store(user_rpm=2)
    first.check_and_take("t", "u", None, now=T0)
    first.check_and_take("t", "u", None, now=T0)
    first.close()

    second = open_store(user_rpm=2)
    assert second.check_and_take("t", "u", None, now=T0 + 1).retry_after == 29
    assert second.check_and_take("t", "u", None, now=T0 + 30).allowed


def test_daily_token_budget_refuses_until_the_next_day(open_store: OpenStore):
    quota = open_store(user_daily_tokens=1000, group_daily_tokens=1500)

    assert quota.check_and_take("t", "u", "g", now=T0).allowed
    quota.add_tokens("t", "u", "g", 600, now=T0)
    assert quota.check_and_take("t", "u", "g", now=T0).allowed
    # The turn that crosses the budget was admitted; the next is refused.
    quota.add_tokens("t", "u", "g", 600, now=T0)
    user = quota.check_and_take("t", "u", "g", now=T0 + 60)
    assert (user.allowed, user.limit) == (False, "user_daily")
    assert user.message == "你今天的额度已用完，明天再来吧。"
    assert user.retry_after == int(MIDNIGHT - T0 - 60)

    assert quota.check_and_take("t", "v", "g", now=T0).allowed
    quota.add_tokens("t", "v", "g", 400, now=T0)
    group = quota.check_and_take("t", "w", "g", now=T0)
    assert (group.allowed, group.limit) == (False, "group_daily")
    assert group.message == "本群今天的额度已用完，明天再来吧。"
    assert quota.check_and_take("t", "w", None, now=T0).allowed

    assert quota.used_today("t", "user", "u", now=T0) == 1200
    assert quota.used_today("t", "group", "g", now=T0) == 1600
    # Midnight in China, not in UTC, starts the next day.
    assert not quota.check_and_take("t", "u", "g", now=MIDNIGHT - 1).allowed
    assert quota.check_and_take("t", "u", "g", now=MIDNIGHT).allowed
    assert quota.used_today("t", "user", "u", now=MIDNIGHT) == 0


def test_two_stores_on_one_state_share_the_quota(open_store: OpenStore):
    first = open_store(user_rpm=4)
    second = open_store(user_rpm=4)

    results = [
        (first if i % 2 else second).check_and_take("t", "u", None, now=T0).allowed
        for i in range(8)
    ]
    assert results.count(True) == 4
    second.add_tokens("t", "u", None, 7, now=T0)
    assert first.used_today("t", "user", "u", now=T0) == 7


async def test_a_working_store_is_healthy(open_store: OpenStore):
    assert await open_store().health() == Health.up()


# —— the SQLite file ——


def store(path: Path, **limits: int) -> SqliteQuotaStore:
    return SqliteQuotaStore(path / "quota.sqlite", QuotaLimits(**limits))


def test_old_days_are_swept(tmp_path: Path):
    quota = store(tmp_path, user_daily_tokens=10)
    quota.add_tokens("t", "u", None, 5, now=T0)
    quota.add_tokens("t", "u", None, 5, now=MIDNIGHT + 3600)

    with sqlite3.connect(tmp_path / "quota.sqlite") as conn:
        rows = conn.execute("SELECT day, tokens FROM daily_tokens").fetchall()
    assert rows == [("2025-03-02", 5)]


_WORKER = """
import sys
from agent.policy.quota import QuotaLimits, SqliteQuotaStore
quota = SqliteQuotaStore(sys.argv[1], QuotaLimits(user_rpm=50))
now = float(sys.argv[2])
print(sum(quota.check_and_take("t", "u", None, now=now).allowed for _ in range(100)))
"""


def test_processes_sharing_the_file_keep_one_quota(tmp_path: Path):
    path = tmp_path / "quota.sqlite"
    SqliteQuotaStore(path, QuotaLimits(user_rpm=50)).close()
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(path), str(T0)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    admitted = [int(worker.communicate(timeout=60)[0]) for worker in workers]

    assert sum(admitted) == 50


async def test_a_store_that_cannot_write_is_down(tmp_path: Path):
    quota = store(tmp_path)
    quota.close()

    health = await quota.health()

    # Every turn writes its request to the store: without it no turn passes.
    assert (health.ok, health.serving) == (False, False)
    assert health.message.startswith("配额数据库无法写入")
