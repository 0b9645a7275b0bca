"""`qqrag serve` with QQRAG_WORKERS=2: two processes on one data folder and one port.

Messages of one conversation reach whichever worker accepts the connection; the workers must
still take its turns one at a time (no turn lost to a concurrent checkpoint write), and
/metrics must count the turns of both, whichever worker answers the scrape.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from evals.fakes.ollama import FakeOllama, Fault, LatencyModel
from evals.harness import ServiceProcess
from tests.conftest import FIXTURES, drop_developer_settings

USER = "40004"
THREAD = f"default:qq:private:{USER}"
BATCH = 12


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("workers")


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOllama]:
    # Each model call takes a while, so turns sent together overlap in both workers.
    with FakeOllama(latency=LatencyModel(fixed_s=0.03)) as server:
        yield server


@pytest.fixture(scope="module")
def service(root: Path, fake: FakeOllama) -> Iterator[ServiceProcess]:
    env = {
        "QQRAG_WORKERS": "2",
        "QQRAG_DATA_DIR": str(root / "data"),
        "QQRAG_OLLAMA_URL": fake.url,
        "QQRAG_DEFAULT_DOCS": str(FIXTURES / "kb"),
        "QQRAG_QUOTA_USER_RPM": "0",
        "QQRAG_MAX_INFLIGHT_TURNS": "0",
        # The batches below queue on one conversation on purpose.
        "QQRAG_MAX_WAITING_PER_CONVERSATION": str(BATCH),
    }
    with pytest.MonkeyPatch.context() as patch:
        # The children inherit this process's environment: no developer's QQRAG_* leaks in.
        drop_developer_settings(patch)
        process = ServiceProcess(env, cwd=root)
    with process:
        process.wait_workers(2)
        yield process


def worker_pids(root: Path) -> set[str]:
    """Workers that have counted something: each writes its own metrics files."""
    folder = root / "data" / "metrics"
    return {match[1] for p in folder.glob("*.db") if (match := re.search(r"_(\d+)\.db$", p.name))}


async def ask_together(url: str, texts: list[str]) -> list[httpx.Response]:
    """All at once, each on a connection of its own, so the workers share them out."""

    async def ask(text: str) -> httpx.Response:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            body = {"scene": "private", "user_id": USER, "text": text}
            return await client.post("/v1/chat", json=body)

    return await asyncio.gather(*(ask(text) for text in texts))


def metric(service: ServiceProcess, prefix: str) -> float:
    """The sum of a series' samples, as a scrape of /metrics reports them."""
    body = httpx.get(f"{service.url}/metrics", timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in body.splitlines() if line.startswith(prefix)
    )


def turns_counted(service: ServiceProcess) -> float:
    return metric(service, "qqrag_turns_total{")


def in_flight(service: ServiceProcess) -> float:
    return metric(service, "qqrag_inflight_turns ")


def test_one_conversation_across_two_workers_keeps_every_turn(service: ServiceProcess, root: Path):
    sent: list[str] = []
    # The kernel decides which worker accepts a connection; a few batches make sure both did.
    for batch in range(5):
        texts = [f"星尘打印机保修多久？（第 {batch}-{n} 问）" for n in range(BATCH)]
        responses = asyncio.run(ask_together(service.url, texts))
        assert [r.status_code for r in responses] == [200] * BATCH, responses[0].text
        sent += texts
        if len(worker_pids(root)) == 2:
            break
    assert len(worker_pids(root)) == 2, "one worker answered every request"

    history = httpx.get(f"{service.url}/v1/threads/{THREAD}", timeout=10).json()["messages"]
    asked = [m["content"] for m in history if m["role"] == "user"]
    # Turns run one at a time whichever worker took them: none overwrote another's checkpoint.
    assert sorted(asked) == sorted(sent)
    assert [m["role"] for m in history] == ["user", "assistant"] * len(sent)


def test_metrics_add_up_the_workers(service: ServiceProcess):
    before = turns_counted(service)
    responses = asyncio.run(ask_together(service.url, ["你好"] * 6))
    assert all(r.status_code == 200 for r in responses)
    # Every scrape, whichever worker serves it, counts the turns of both.
    assert [turns_counted(service) for _ in range(4)] == [before + 6] * 4


def test_killed_workers_leave_no_turn_in_flight_behind(service: ServiceProcess, fake: FakeOllama):
    """Runs last: it kills the workers (uvicorn starts new ones)."""
    fake.fail_next(Fault.SLOW)
    body = {"scene": "private", "user_id": "40005", "text": "星尘打印机保修多久？"}
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(httpx.post, f"{service.url}/v1/chat", json=body, timeout=60)
        deadline = time.monotonic() + 30
        while in_flight(service) != 1:
            assert time.monotonic() < deadline, "the slow turn never started"
            time.sleep(0.05)
        workers = [
            int(pid) for pid in re.findall(r"Started server process \[(\d+)\]", service.log())
        ]
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        with pytest.raises(httpx.HTTPError):
            pending.result()

    service.wait_workers(len(workers) + 2)
    # The dead worker's count of 1 went with it: the replacements dropped its gauge file.
    assert [in_flight(service) for _ in range(4)] == [0] * 4
    fake.reset()
