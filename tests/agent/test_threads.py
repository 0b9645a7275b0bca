import asyncio

from agent.threads import KeyedLocks, thread_id


def test_thread_ids():
    assert thread_id("qq", "group", "U1", "G1") == "qq:group:G1:U1"
    assert thread_id("qq", "group", "U1", "G1", scope="group") == "qq:group:G1"
    assert thread_id("onebot", "private", "U1", "G1") == "onebot:private:U1"


async def test_keyed_locks_serialise_one_key_and_free_it_afterwards():
    locks = KeyedLocks()
    order: list[str] = []

    async def hold(key: str, name: str, seconds: float) -> None:
        async with locks.hold(key):
            order.append(f"{name}+")
            await asyncio.sleep(seconds)
            order.append(f"{name}-")

    await asyncio.gather(hold("t", "a", 0.05), hold("t", "b", 0.0), hold("u", "c", 0.01))
    assert order.index("a-") < order.index("b+")
    # Another key is not held up by "t".
    assert order.index("c+") < order.index("a-")
    assert len(locks) == 0


async def test_keyed_locks_release_on_error():
    locks = KeyedLocks()
    try:
        async with locks.hold("t"):
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert len(locks) == 0
    async with locks.hold("t"):
        assert len(locks) == 1
