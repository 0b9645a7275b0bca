import asyncio
import subprocess
import sys
import time
from pathlib import Path

from agent.threads import FileKeyedLocks, KeyedLocks, thread_id


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
