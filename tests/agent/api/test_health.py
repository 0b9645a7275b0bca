"""/readyz, /metrics and `qqrag doctor` read the same Health, never a message's wording."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import server
from agent.api.deps import AppRuntime
from agent.doctor import Finding, run_checks
from agent.health import LatestChecks
from agent.settings import get_settings
from evals.fakes.ollama import FakeOllama
from tests.conftest import FIXTURES
from tools.base import Passage
from tools.health import Health

UNREACHABLE = "http://127.0.0.1:9"


@pytest.fixture
def data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("QQRAG_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("QQRAG_DEFAULT_DOCS", str(FIXTURES / "kb"))
    return tmp_path / "data"


def started(ollama_url: str, monkeypatch: pytest.MonkeyPatch) -> TestClient:
    monkeypatch.setenv("QQRAG_OLLAMA_URL", ollama_url)
    get_settings.cache_clear()
    return TestClient(server.create_app())


def runtime(client: TestClient) -> AppRuntime:
    rt: AppRuntime = client.app.state.runtime  # type: ignore[attr-defined]
    return rt


class Reporting:
    """A knowledge backend that reports whatever Health it is given."""

    name = "reporting"

    def __init__(self, health: Health) -> None:
        self.reported = health

    async def search(self, query: str, k: int) -> list[Passage]:
        return []

    async def health(self) -> Health:
        return self.reported


@pytest.fixture
def fake_ollama() -> Iterator[FakeOllama]:
    with FakeOllama() as fake:
        yield fake


@pytest.mark.parametrize(
    ("health", "status", "code"),
    [
        (Health.degraded("备用库顶上了"), "degraded", 200),
        (Health.degraded(""), "degraded", 200),
        # The suffix /readyz once matched no longer makes a broken base look served.
        (Health.down("MaxKB 连不上（已改用嵌入式知识库）"), "down", 503),
        (Health.up(), "ok", 200),
    ],
)
def test_readiness_is_decided_by_health_not_by_its_text(
    health: Health,
    status: str,
    code: int,
    data: Path,
    fake_ollama: FakeOllama,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with started(fake_ollama.url, monkeypatch) as client:
        runtime(client).services.knowledge = Reporting(health)
        response = client.get("/readyz")
    assert (response.status_code, response.json()["status"]) == (code, status)
    assert response.json()["checks"]["knowledge"] == health.as_json()


def by_check(findings: list[Finding]) -> dict[str, Finding]:
    return {finding.check: finding for finding in findings}


async def test_doctor_and_readyz_agree_on_an_unreachable_ollama(
    data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with started(UNREACHABLE, monkeypatch) as client:
        ready = client.get("/readyz").json()
    found = by_check(await run_checks(get_settings(), containerised=False, environ={}))
    ollama = ready["checks"]["ollama"]
    assert ready["status"] == "degraded" and ollama["status"] == "degraded"
    assert (found["Ollama 连接"].detail, found["Ollama 连接"].fix) == (
        ollama["error"],
        ollama["fix"],
    )
    assert found["Ollama 连接"].status == "error"


async def test_doctor_and_readyz_agree_on_a_missing_model(
    data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeOllama(models=("llama3.2:3b",)) as fake:
        with started(fake.url, monkeypatch) as client:
            ready = client.get("/readyz").json()
        found = by_check(await run_checks(get_settings(), containerised=False, environ={}))
    ollama = ready["checks"]["ollama"]
    assert ollama["status"] == "degraded" and "qwen3:8b" in ollama["error"]
    assert found["模型 qwen3:8b"].status == "error"
    assert found["模型 qwen3:8b"].fix == ollama["fix"] == "运行 ollama pull qwen3:8b"


def gauge(text: str, dependency: str) -> float:
    found = re.search(rf'qqrag_dependency_status\{{dependency="{dependency}"\}} (\S+)', text)
    assert found is not None, text
    return float(found[1])


def ollama_errors(text: str) -> float:
    found = re.search(r'qqrag_dependency_errors_total\{dependency="ollama"\} (\S+)', text)
    return float(found[1]) if found else 0.0


def test_metrics_show_each_dependency_from_a_recent_check(
    data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [0.0]
    with started(UNREACHABLE, monkeypatch) as client:
        rt = runtime(client)
        rt.health = LatestChecks(rt.check_dependencies, max_age=10.0, clock=lambda: now[0])
        first = client.get("/metrics").text
        assert (gauge(first, "sqlite"), gauge(first, "knowledge")) == (1.0, 1.0)
        assert gauge(first, "ollama") == 0.5
        # A second scrape within the age limit reuses the check: Ollama is not probed again.
        assert ollama_errors(client.get("/metrics").text) == ollama_errors(first) == 1.0
        now[0] = 10.0
        assert ollama_errors(client.get("/metrics").text) == 2.0
        runtime(client).services.knowledge = Reporting(Health.down("坏了"))
        client.get("/readyz")
        assert gauge(client.get("/metrics").text, "knowledge") == 0.0


async def test_doctor_and_readyz_agree_on_a_disk_short_of_space(
    data: Path, tmp_path: Path, fake_ollama: FakeOllama, monkeypatch: pytest.MonkeyPatch
) -> None:
    # This disk's real free space against a threshold above it: a disk filling up, before it
    # is full (tests/test_storage_full.py fills one).
    threshold = shutil.disk_usage(tmp_path).free // 2**20 + 1_000_000
    monkeypatch.setenv("QQRAG_MIN_FREE_MB", str(threshold))
    with started(fake_ollama.url, monkeypatch) as client:
        ready = client.get("/readyz")
        metrics = client.get("/metrics").text
    found = by_check(await run_checks(get_settings(), containerised=False, environ={}))
    storage = ready.json()["checks"]["storage"]
    assert (ready.status_code, ready.json()["status"], storage["status"]) == (503, "down", "down")
    assert f"低于 QQRAG_MIN_FREE_MB（{threshold} MB）" in storage["error"]
    assert gauge(metrics, "storage") == 0.0

    # The free space may change by a megabyte between the two looks.
    def unnumbered(text: str) -> str:
        return re.sub(r"只剩 \d+ MB", "只剩 … MB", text)

    assert found["数据目录"].status == "error"
    assert unnumbered(found["数据目录"].detail) == unnumbered(storage["error"])
    assert found["数据目录"].fix == storage["fix"]
