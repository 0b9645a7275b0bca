"""The data folder's disk fills up under a running service, then gets space back.

The disk is real: a tmpfs of a few MB, filled to the last page by a file, freed by deleting
it. Nothing else gives what production gets: every write fails with ENOSPC (the readiness
probe's too) and SQLite answers with its own SQLITE_FULL, "database or disk is full". A file
size limit (RLIMIT_FSIZE) makes SQLite report "disk I/O error" (SQLITE_IOERR_WRITE) instead
and lets small files through; `PRAGMA max_page_count` gives SQLITE_FULL on one connection
only, and only to writes that need a new page, with no disk for the probe to find full.

The service runs in a mount namespace of its own (`unshare`): inside a user namespace even an
unprivileged user may mount a tmpfs, and the mount ends with the service, whatever happens
to the test. The test reaches the folder through /proc/PID/root, and runs `qqrag doctor` in
the same namespaces (`nsenter`). Where this system refuses user namespaces the test is
skipped, saying so.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from evals.fakes.ollama import FakeOllama
from evals.harness import ServiceProcess
from tests.conftest import FIXTURES

DISK_SIZE = "16m"
# The service's own mount namespace, where the data folder gets a tmpfs of its own.
UNSHARE = ["unshare", "--user", "--map-root-user", "--mount"]
MOUNT = f'mount -t tmpfs -o size={DISK_SIZE} qqrag-test "$0"'
# Into the service's namespaces; an unprivileged user's namespace refuses setgroups, which
# nsenter would call without --preserve-credentials.
NSENTER = ["nsenter", "--preserve-credentials", "--user", "--mount"]
STORAGE_FULL = "服务器存储空间已满，暂时无法回答，请联系管理员。"
FULL_IN_LOG = "is full (database or disk is full)"


def namespace_problem(folder: Path) -> str | None:
    """Why the service cannot get a tmpfs of its own here, or None when it can."""
    missing = [tool for tool in ("unshare", "nsenter") if shutil.which(tool) is None]
    if missing:
        return f"{' and '.join(missing)} not installed (util-linux)"
    tried = subprocess.run(
        [*UNSHARE, "sh", "-c", MOUNT, str(folder)], capture_output=True, text=True, timeout=10
    )
    if tried.returncode:
        return f"cannot mount a tmpfs in a user namespace here: {tried.stderr.strip()}"
    return None


@pytest.fixture(scope="module")
def ollama() -> Iterator[FakeOllama]:
    with FakeOllama() as fake:
        yield fake


@pytest.fixture
def data(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    if problem := namespace_problem(folder):
        pytest.skip(problem)
    return folder


def fill(folder: Path) -> None:
    """Write a file until the kernel says the disk is full."""
    with (folder / "filler").open("wb", buffering=0) as filler, pytest.raises(OSError) as full:
        while True:
            filler.write(b"\0" * 65536)
    assert full.value.errno == errno.ENOSPC


def ask(service: ServiceProcess, text: str) -> httpx.Response:
    body = {"scene": "private", "user_id": "7", "text": text}
    return httpx.post(f"{service.url}/v1/chat", json=body, timeout=30)


def sse_events(text: str) -> list[tuple[str, dict]]:
    events = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((fields["event"], json.loads(fields["data"])))
    return events


@pytest.mark.parametrize(
    "quotas",
    [
        # The quota gate's write is a turn's first.
        {},
        # Without quotas the conversation's checkpoint is the first write.
        {
            "QQRAG_QUOTA_USER_RPM": "0",
            "QQRAG_QUOTA_GROUP_RPM": "0",
            "QQRAG_QUOTA_USER_DAILY_TOKENS": "0",
            "QQRAG_QUOTA_GROUP_DAILY_TOKENS": "0",
        },
    ],
    ids=["full at the quota", "full at the checkpoint"],
)
def test_a_full_disk_is_not_ready_gets_a_short_reply_and_heals_without_a_restart(
    data: Path, tmp_path: Path, ollama: FakeOllama, quotas: dict[str, str]
) -> None:
    ollama.reset()
    env = {
        "QQRAG_DATA_DIR": str(data),
        "QQRAG_OLLAMA_URL": ollama.url,
        "QQRAG_DEFAULT_DOCS": str(FIXTURES / "kb"),
        "QQRAG_MIN_FREE_MB": "1",
        # Fewer slots than failed turns below: a slot a failed turn kept would show as "busy".
        "QQRAG_MAX_INFLIGHT_TURNS": "2",
        **quotas,
    }
    under = [*UNSHARE, "sh", "-c", f'{MOUNT} && exec "$@"', str(data)]
    with ServiceProcess(env, cwd=tmp_path, under=under) as service:
        first = ask(service, "星尘打印机保修多久？")
        assert first.status_code == 200, first.text
        ready = httpx.get(f"{service.url}/readyz", timeout=10)
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"]["storage"]["status"] == "ok"

        disk = Path(f"/proc/{service.pid}/root") / data.relative_to("/")
        fill(disk)

        ready = httpx.get(f"{service.url}/readyz", timeout=10)
        storage = ready.json()["checks"]["storage"]
        assert ready.status_code == 503 and ready.json()["status"] == "down"
        assert storage["status"] == "down"
        assert storage["error"] == (
            f"数据目录 {data} 所在磁盘已满（No space left on device），对话、配额和审计记录都写不进去"
        )
        assert "腾出空间后服务自动恢复，无需重启" in storage["fix"]
        metrics = httpx.get(f"{service.url}/metrics", timeout=10).text
        assert 'qqrag_dependency_status{dependency="storage"} 0.0' in metrics
        doctor = subprocess.run(
            [*NSENTER, f"--target={service.pid}", sys.executable, "-m", "agent.cli", "doctor"],
            env={**os.environ, **env, "COLUMNS": "1000"},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert doctor.returncode == 1
        lines = doctor.stdout.splitlines()
        head = lines.index(f"错误  数据目录：{storage['error']}")
        assert lines[head + 1] == f"      怎么修：{storage['fix']}"

        refused = ask(service, "星尘打印机支持哪些耗材？")
        assert refused.status_code == 507
        assert refused.json()["error"]["code"] == "storage_full"
        assert refused.json()["error"]["message"] == STORAGE_FULL
        question = {"scene": "private", "user_id": "7", "text": "星尘打印机售价多少？"}
        streamed = httpx.post(f"{service.url}/v1/chat/stream", json=question, timeout=30)
        kind, error = sse_events(streamed.text)[-1]
        assert (kind, error["code"], error["message"]) == ("error", "storage_full", STORAGE_FULL)
        messages = [{"role": "user", "content": "星尘打印机售价多少？"}]
        completion = httpx.post(
            f"{service.url}/v1/chat/completions", json={"messages": messages}, timeout=30
        )
        assert completion.status_code == 507
        assert completion.json()["error"]["code"] == "storage_full"
        chunks = httpx.post(
            f"{service.url}/v1/chat/completions",
            json={"messages": messages, "stream": True},
            timeout=30,
        ).text
        assert f'"content": "{STORAGE_FULL}"' in chunks
        feedback = httpx.post(
            f"{service.url}/v1/feedback",
            json={"scene": "private", "user_id": "7", "rating": "good"},
            timeout=30,
        )
        assert feedback.status_code == 507
        assert feedback.json() == {"error": {"code": "storage_full", "message": STORAGE_FULL}}

        log = service.log()
        assert log.count(FULL_IN_LOG) == 5, log
        assert "Traceback" not in log

        (disk / "filler").unlink()
        again = ask(service, "星尘打印机支持哪些耗材？")
        assert again.status_code == 200, again.text
        assert "PLA" in again.json()["answer"]
        ready = httpx.get(f"{service.url}/readyz", timeout=10)
        assert ready.status_code == 200 and ready.json()["checks"]["storage"]["status"] == "ok"
        thread = first.json()["thread_id"]
        history = httpx.get(f"{service.url}/v1/threads/{thread}", timeout=10).json()["messages"]
        asked = [m["content"] for m in history if m["role"] == "user"]
        assert asked == ["星尘打印机保修多久？", "星尘打印机支持哪些耗材？"]
