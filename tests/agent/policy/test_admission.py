"""Every admission bound (this process's, and Redis's when reachable) behaves alike: one suite run
over each. What only the Redis bound does (across processes, leases) is in test_redis_store.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import pytest

from agent.policy.admission import Admission, LocalAdmission
from agent.policy.redis_store import RedisAdmission, connect_redis
from tests.conftest import REDIS_URL
from tools.health import Health

OpenAdmission = Callable[[int], Admission]


@pytest.fixture(params=["local", "redis"])
def open_admission(request: pytest.FixtureRequest) -> Iterator[OpenAdmission]:
    if request.param == "local":
        yield LocalAdmission
        return
    prefix = request.getfixturevalue("redis_space")
    client = connect_redis(REDIS_URL)
    yield lambda limit: RedisAdmission(client, limit, prefix=prefix)
    client.close()


async def test_a_burst_never_exceeds_the_bound_and_frees_every_slot(open_admission: OpenAdmission):
    admission = open_admission(3)
    peak = 0
    release = asyncio.Event()

    async def turn() -> bool:
        nonlocal peak
        async with admission.slot() as ok:
            if not ok:
                return False
            peak = max(peak, admission.in_flight)
            await release.wait()
            return True

    tasks = [asyncio.create_task(turn()) for _ in range(20)]
    await asyncio.sleep(0)
    assert admission.in_flight == 3
    release.set()
    results = await asyncio.gather(*tasks)

    assert results.count(True) == 3
    assert peak == 3
    assert admission.in_flight == 0
    assert admission.try_enter()
    admission.leave()


async def test_a_failing_turn_frees_its_slot(open_admission: OpenAdmission):
    admission = open_admission(1)
    with pytest.raises(RuntimeError, match="boom"):
        async with admission.slot() as ok:
            assert ok
            raise RuntimeError("boom")
    assert admission.in_flight == 0


def test_try_enter_and_leave(open_admission: OpenAdmission):
    admission = open_admission(2)
    assert admission.try_enter() and admission.try_enter()
    assert not admission.try_enter()
    admission.leave()
    assert admission.try_enter()
    admission.leave()
    admission.leave()
    with pytest.raises(RuntimeError, match="without a matching"):
        admission.leave()


def test_zero_is_unlimited(open_admission: OpenAdmission):
    admission = open_admission(0)
    assert all(admission.try_enter() for _ in range(200))
    assert admission.in_flight == 200
    for _ in range(200):
        admission.leave()
    with pytest.raises(ValueError, match="limit"):
        open_admission(-1)


async def test_a_working_bound_is_healthy(open_admission: OpenAdmission):
    assert await open_admission(1).health() == Health.up()
