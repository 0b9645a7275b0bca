"""What only the Redis backends do, against a real Redis: keys that expire, one bound across
processes, leases that free a dead process's slots, per-process fallbacks while Redis is away.
What every quota store, admission or lock does is in the suites run over each implementation
(test_quota.py, test_admission.py, tests/agent/test_threads.py).

Skipped when Redis is not reachable (QQRAG_TEST_REDIS_URL, default redis://127.0.0.1:6379/0),
failed instead when QQRAG_REQUIRE_SCALE_OUT=1.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from agent.policy.quota import ALLOWED, QuotaLimits
from agent.policy.redis_store import (
    RedisAdmission,
    RedisQuotaStore,
    RedisThreadLocks,
    SharedStateError,
    connect_redis,
)
from evals.harness import free_port
from tests.conftest import REDIS_URL, redis_key_prefix, redis_problem, require_servers

_UNREACHABLE = redis_problem()
REDIS_PROBLEM = f"{_UNREACHABLE}; set QQRAG_TEST_REDIS_URL" if _UNREACHABLE else None


@pytest.fixture(scope="module")
def prefix() -> Iterator[str]:
    """A key prefix of this run's own; its keys are deleted afterwards."""
    require_servers(REDIS_PROBLEM)
    with redis_key_prefix() as run:
        yield run


@pytest.fixture
def connect(prefix: str) -> Iterator[Callable[[], redis.Redis]]:
    """Clients as the service makes them, one per simulated process, closed afterwards."""
    clients: list[redis.Redis] = []

    def make() -> redis.Redis:
        clients.append(connect_redis(REDIS_URL))
        return clients[-1]

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def space(prefix: str) -> str:
    """A prefix per test, so tests never see each other's buckets or slots."""
    return f"{prefix}{uuid.uuid4().hex[:8]}:"


def store(client: redis.Redis, space: str, **limits: int) -> RedisQuotaStore:
    return RedisQuotaStore(client, QuotaLimits(**limits), prefix=space)


def test_every_key_expires(connect, space):
    client = connect()
    quota = store(client, space, user_rpm=5, group_rpm=5, user_daily_tokens=100)
    quota.check_and_take("t", "u", "g")
    quota.add_tokens("t", "u", "g", 10)
    admission = RedisAdmission(client, 2, prefix=space)
    assert admission.try_enter()

    ttls = {key: client.ttl(key) for key in client.scan_iter(match=f"{space}*")}

    assert len(ttls) == 5  # user and group buckets and days, the admission slots
    # Buckets outlive their minute of refill; a day's counter its day; slots their lease.
    assert all(0 < ttl <= 24 * 3600 + 3600 for ttl in ttls.values()), ttls
    admission.leave()


def test_admission_bound_holds_across_instances_under_concurrency(connect, space):
    instances = [RedisAdmission(connect(), 3, prefix=space) for _ in range(2)]
    start = threading.Barrier(16)

    def enter(i: int) -> bool:
        start.wait()
        return instances[i % 2].try_enter()

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(enter, range(16)))

    assert results.count(True) == 3
    assert instances[0].in_flight == instances[1].in_flight == 3
    for i, entered in enumerate(results):
        if entered:
            instances[i % 2].leave()
    assert instances[0].in_flight == 0
    assert instances[1].try_enter()
    instances[1].leave()
    with pytest.raises(RuntimeError, match="without a matching"):
        instances[1].leave()


_DIES_HOLDING_SLOTS = """
import os, sys
from agent.policy.redis_store import RedisAdmission, connect_redis
admission = RedisAdmission(connect_redis(sys.argv[1]), 2, prefix=sys.argv[2])
assert admission.try_enter() and admission.try_enter()
os._exit(0)  # no leave(), no cleanup: as a killed process would
"""


def test_a_dead_process_slots_free_themselves_and_a_live_one_keeps_its_own(connect, space):
    subprocess.run(
        [sys.executable, "-c", _DIES_HOLDING_SLOTS, REDIS_URL, space], check=True, timeout=60
    )
    survivor = RedisAdmission(connect(), 2, prefix=space, lease_s=0.6)
    assert not survivor.try_enter()
    # Injected time ends the dead process's leases (30 s by default); the survivor's own
    # leases are renewed in real time.
    assert survivor.try_enter(now=time.time() + 31)
    assert survivor.try_enter()

    time.sleep(1.0)  # past the lease: only renewal keeps the survivor's slots
    other = RedisAdmission(connect(), 2, prefix=space, lease_s=0.6)
    assert not other.try_enter()
    assert other.in_flight == 2
    survivor.leave()
    assert other.try_enter()
    other.leave()
    survivor.leave()


async def test_without_redis_quotas_let_requests_through_and_the_bound_is_per_process():
    gone = redis.Redis(port=free_port(), socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    quota = RedisQuotaStore(gone, QuotaLimits(user_rpm=1))
    assert quota.check_and_take("t", "u", None) == ALLOWED
    assert quota.check_and_take("t", "u", None) == ALLOWED
    quota.add_tokens("t", "u", None, 10)

    admission = RedisAdmission(gone, 1)
    assert admission.try_enter()
    assert not admission.try_enter()
    admission.leave()
    assert admission.try_enter()
    admission.leave()
    # /readyz says so, for every Redis-backed policy: the service is degraded, not down.
    for backend in (quota, admission, RedisThreadLocks(gone)):
        health = await backend.health()
        assert (health.status, health.serving) == ("degraded", True)
        assert health.message.startswith("无法连接 Redis（请检查 QQRAG_REDIS_URL）")
        assert "问答照常" in health.message and "QQRAG_REDIS_URL" in health.fix


def test_a_missing_or_unreachable_redis_names_the_setting():
    with pytest.raises(SharedStateError, match="QQRAG_REDIS_URL"):
        connect_redis("")
    with pytest.raises(SharedStateError, match=r"无法连接 Redis（请检查 QQRAG_REDIS_URL）"):
        connect_redis(f"redis://127.0.0.1:{free_port()}/0")


async def test_thread_locks_serialise_a_conversation_across_processes(connect, space):
    # Two instances with their own clients stand for two replicas.
    first, second = (RedisThreadLocks(connect(), prefix=space) for _ in range(2))
    order: list[str] = []

    async def turn(locks: RedisThreadLocks, key: str, name: str) -> None:
        async with locks.hold(key):
            order.append(f"{name}+")
            await asyncio.sleep(0.05)
            order.append(f"{name}-")

    await asyncio.gather(
        turn(first, "qq:private:1", "a"),
        turn(second, "qq:private:1", "b"),
        turn(second, "qq:private:2", "c"),
    )
    assert order.index("a-") < order.index("b+") or order.index("b-") < order.index("a+")
    # Another conversation went ahead at once.
    assert order.index("c+") < max(order.index("a-"), order.index("b-"))


async def test_a_long_turn_keeps_its_lease_and_a_dead_holder_frees_it(connect, space):
    live = RedisThreadLocks(connect(), prefix=space, lease_s=0.3)
    other = RedisThreadLocks(connect(), prefix=space, lease_s=0.3)
    async with live.hold("qq:private:1"):
        await asyncio.sleep(0.8)  # well past the lease: renewal keeps it
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2), other.hold("qq:private:1"):
                pass

    # A holder that died mid-turn never released; its lease runs out by itself.
    dead = connect().lock(f"{space}thread:qq:private:2", timeout=0.3)
    assert dead.acquire(blocking=False)
    async with asyncio.timeout(2):
        async with other.hold("qq:private:2"):
            pass


async def test_without_redis_conversations_are_serialised_per_process():
    gone = redis.Redis(port=free_port(), socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    locks = RedisThreadLocks(gone)
    order: list[str] = []

    async def turn(name: str) -> None:
        async with locks.hold("qq:private:1"):
            order.append(f"{name}+")
            await asyncio.sleep(0.01)
            order.append(f"{name}-")

    await asyncio.gather(turn("a"), turn("b"))
    assert order == ["a+", "a-", "b+", "b-"]
