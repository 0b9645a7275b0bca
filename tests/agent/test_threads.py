"""Conversation ids, then one suite run over every kind of conversation lock (this process's,
this machine's, and Redis's when reachable), then what each kind does alone. The Redis locks
across processes are in tests/agent/policy/test_redis_store.py."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.policy.redis_store import RedisThreadLocks, connect_redis
from agent.threads import (
    ConversationBusy,
    FileKeyedLocks,
    KeyedLocks,
    ThreadLocks,
    speaker_of,
    thread_id,
)
from tests.conftest import REDIS_URL
from tools.health import Health


def test_thread_ids():
    assert thread_id("qq", "group", "U1", "G1") == "qq:group:G1:U1"
    assert thread_id("qq", "group", "U1", "G1", scope="group") == "qq:group:G1"
    assert thread_id("onebot", "private", "U1", "G1") == "onebot:private:U1"


def test_a_conversation_id_tells_its_group_and_user_back_unescaped():
    member = "acme:" + thread_id("qq", "group", "7:8", "1%2")
    assert speaker_of(member) == {
        "tenant": "acme",
        "platform": "qq",
        "scene": "group",
        "group_id": "1%2",
        "user_id": "7:8",
    }
    assert (
        speaker_of("acme:" + thread_id("qq", "group", "7", "9", scope="group"))["user_id"] is None
    )
    private = speaker_of("acme:onebot:private:42")
    assert (private["group_id"], private["user_id"]) == (None, "42")
    assert speaker_of("odd")["tenant"] == "odd"


def test_thread_ids_never_map_two_speakers_to_one_conversation():
    """Ids may contain `:`: group 1:2 with user 3 once shared group 1 with user 2:3's thread
    (one speaker could read the other's /原文 passages)."""
    pairs = [("1:2", "3"), ("1", "2:3"), ("1%3A2", "3"), ("1", "2%3A3")]
    ids = {thread_id("qq", "group", user, group) for group, user in pairs}
    assert len(ids) == len(pairs)
    private = {thread_id("qq", "private", user) for user in ("a:b", "a%3Ab", "a")}
    assert len(private) == 3


@pytest.fixture(params=["process", "file", "redis"])
def locks(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ThreadLocks]:
    made: ThreadLocks
    if request.param == "process":
        made = KeyedLocks()
    elif request.param == "file":
        made = FileKeyedLocks(tmp_path / "threads.lock")
    else:
        made = RedisThreadLocks(
            connect_redis(REDIS_URL), prefix=request.getfixturevalue("redis_space")
        )
    yield made
    made.close()


async def test_one_key_is_held_by_one_turn_at_a_time(locks: ThreadLocks):
    order: list[str] = []
    other_key_done = asyncio.Event()

    async def hold(key: str, name: str) -> None:
        async with locks.hold(key):
            order.append(f"{name}+")
            if name == "a":
                # Another key is not held up by "t": it finishes while "t" is held.
                await other_key_done.wait()
            order.append(f"{name}-")
            if name == "c":
                other_key_done.set()

    await asyncio.gather(hold("t", "a"), hold("t", "b"), hold("u", "c"))
    assert order.index("a-") < order.index("b+")
    assert order.index("c-") < order.index("a-")


async def test_a_failing_turn_frees_its_key(locks: ThreadLocks):
    with pytest.raises(RuntimeError, match="boom"):
        async with locks.hold("t"):
            raise RuntimeError("boom")
    async with asyncio.timeout(5), locks.hold("t"):
        pass


async def test_past_the_waiting_bound_a_message_is_turned_away_at_once(locks: ThreadLocks):
    """One holds the conversation, one may wait; the next is refused without waiting, and
    once the holder is done the waiting one gets its turn."""
    release = asyncio.Event()
    held = asyncio.Event()

    async def first() -> None:
        async with locks.hold("t", max_waiting=1):
            held.set()
            await release.wait()

    async def second() -> str:
        async with locks.hold("t", max_waiting=1):
            return "served"

    holder = asyncio.create_task(first())
    await held.wait()
    waiter = asyncio.create_task(second())
    await asyncio.sleep(0)  # the waiter registers before the third message comes
    with pytest.raises(ConversationBusy):
        async with asyncio.timeout(5), locks.hold("t", max_waiting=1):
            pytest.fail("a third message got the conversation while two were ahead of it")
    # Other conversations are not bounded by this one's queue.
    async with asyncio.timeout(5), locks.hold("u", max_waiting=0):
        pass
    release.set()
    await holder
    assert await asyncio.wait_for(waiter, 5) == "served"
    async with asyncio.timeout(5), locks.hold("t", max_waiting=0):
        pass


async def test_a_wait_for_the_conversation_ends_at_its_limit(locks: ThreadLocks):
    release = asyncio.Event()
    held = asyncio.Event()

    async def first() -> None:
        async with locks.hold("t"):
            held.set()
            await release.wait()

    holder = asyncio.create_task(first())
    await held.wait()

    async def late() -> None:
        async with locks.hold("t", wait_s=0.05):
            pytest.fail("got the conversation while it was held")

    waiter = asyncio.create_task(late())
    # The test's own guard against a hang; the lock must give up long before it.
    done, _ = await asyncio.wait({waiter}, timeout=5)
    assert waiter in done, "the wait went on past its limit"
    assert isinstance(waiter.exception(), TimeoutError)
    release.set()
    await holder
    # The timed-out waiter left nothing behind: the next one gets the conversation at once.
    async with asyncio.timeout(5), locks.hold("t", max_waiting=0, wait_s=0.05):
        pass


async def test_working_locks_are_healthy(locks: ThreadLocks):
    assert await locks.health() == Health.up()


async def test_keyed_locks_drop_a_key_nobody_holds():
    locks = KeyedLocks()
    with pytest.raises(RuntimeError):
        async with locks.hold("t"):
            assert len(locks) == 1
            raise RuntimeError("boom")
    assert len(locks) == 0


HOLDER = """
import asyncio, sys, time
from pathlib import Path
from agent.threads import FileKeyedLocks

async def main() -> None:
    locks = FileKeyedLocks(Path(sys.argv[1]))
    async with locks.hold(sys.argv[2]):
        print("held", flush=True)
        time.sleep(float(sys.argv[3]))

asyncio.run(main())
"""


def _hold_in_another_process(path: Path, key: str, seconds: float) -> subprocess.Popen[str]:
    """A child process holding `key` for `seconds`, returned once it holds it."""
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path), key, str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None and child.stdout.readline() == "held\n"
    return child


async def test_file_locks_serialise_one_key_across_processes(tmp_path: Path):
    path = tmp_path / "threads.lock"
    locks = FileKeyedLocks(path)
    child = _hold_in_another_process(path, "qq:private:1", 1.0)
    try:
        held = time.monotonic()
        # Another conversation is not held up by the child's.
        async with locks.hold("qq:private:2"):
            assert time.monotonic() - held < 0.5
        async with locks.hold("qq:private:1"):
            waited = time.monotonic() - held
        # The child holds it for 1 s after saying so; only reading that took some of it.
        assert waited >= 0.6, f"got the lock {waited:.2f} s in, while the other process held it"
    finally:
        child.wait()
        locks.close()


async def test_a_dead_holder_frees_its_conversation(tmp_path: Path):
    path = tmp_path / "threads.lock"
    locks = FileKeyedLocks(path)
    child = _hold_in_another_process(path, "qq:private:1", 60)
    child.kill()
    child.wait()
    try:
        async with asyncio.timeout(2):
            async with locks.hold("qq:private:1"):
                pass
    finally:
        locks.close()


async def test_file_locks_serialise_tasks_of_one_process_sharing_a_slot(tmp_path: Path):
    locks = FileKeyedLocks(tmp_path / "threads.lock")
    # Two keys in one byte: fcntl would let both tasks of this process in at once.
    first = "qq:private:1"
    second = next(
        f"qq:private:{n}"
        for n in range(2, 10**7)
        if locks.slot(f"qq:private:{n}") == locks.slot(first)
    )
    order: list[str] = []

    async def hold(key: str, name: str) -> None:
        async with locks.hold(key):
            order.append(f"{name}+")
            await asyncio.sleep(0.02)
            order.append(f"{name}-")

    await asyncio.gather(hold(first, "a"), hold(second, "b"))
    locks.close()
    assert order in (["a+", "a-", "b+", "b-"], ["b+", "b-", "a+", "a-"])
