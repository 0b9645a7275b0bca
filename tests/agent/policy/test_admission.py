import asyncio

import pytest

from agent.policy.admission import Admission


async def test_a_burst_never_exceeds_the_bound_and_frees_every_slot():
    admission = Admission(3)
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


async def test_a_failing_turn_frees_its_slot():
    admission = Admission(1)
    with pytest.raises(RuntimeError, match="boom"):
        async with admission.slot() as ok:
            assert ok
            raise RuntimeError("boom")
    assert admission.in_flight == 0


def test_try_enter_and_leave():
    admission = Admission(2)
    assert admission.try_enter() and admission.try_enter()
    assert not admission.try_enter()
    admission.leave()
    assert admission.try_enter()
    admission.leave()
    admission.leave()
    with pytest.raises(RuntimeError):
        admission.leave()


def test_zero_is_unlimited():
    admission = Admission(0)
    assert all(admission.try_enter() for _ in range(1000))
    assert admission.in_flight == 1000
