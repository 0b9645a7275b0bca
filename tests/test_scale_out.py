"""Two replicas of the service, each with its own data folder, sharing one PostgreSQL (the
conversations) and one Redis (quotas and the in-flight bound), behind no load balancer: the
tests pick the replica.

Skipped when PostgreSQL or Redis is not reachable (QQRAG_TEST_POSTGRES_URL, default
postgresql://postgres@127.0.0.1:5432/test; QQRAG_TEST_REDIS_URL, default
redis://127.0.0.1:6379/0), failed instead when QQRAG_REQUIRE_SCALE_OUT=1. The tables live in a
schema of this run's own, dropped afterwards; the Redis keys under a prefix of their own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psycopg
import pytest

from agent.checkpoints import CheckpointerError, open_checkpointer
from agent.settings import Settings
from evals.fakes.ollama import FakeOllama, LatencyModel
from evals.harness import ServiceProcess, free_port
from tests.conftest import (
    FIXTURES,
    REDIS_URL,
    drop_developer_settings,
    postgres_problem,
    postgres_schema,
    redis_key_prefix,
    redis_problem,
    require_servers,
)

THREAD = "default:qq:group:20002:30003"


def _servers_problem() -> str | None:
    problems = [problem for problem in (postgres_problem(), redis_problem()) if problem]
    if problems:
        return "; ".join([*problems, "set QQRAG_TEST_POSTGRES_URL / QQRAG_TEST_REDIS_URL"])
    return None


SERVERS_PROBLEM = _servers_problem()


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A connection string whose tables land in a fresh schema, dropped afterwards."""
    require_servers(SERVERS_PROBLEM)
    with postgres_schema() as url:
        yield url


@pytest.fixture(scope="module")
def redis_prefix() -> Iterator[str]:
    with redis_key_prefix() as prefix:
        yield prefix


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOllama]:
    with FakeOllama() as server:
        yield server


@pytest.fixture(scope="module")
def replicas(
    postgres_url: str, redis_prefix: str, fake: FakeOllama, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServiceProcess, ServiceProcess]]:
    root = tmp_path_factory.mktemp("replicas")
    shared = {
        "QQRAG_OLLAMA_URL": fake.url,
        "QQRAG_DEFAULT_DOCS": str(FIXTURES / "kb"),
        "QQRAG_CHECKPOINTER": "postgres",
        "QQRAG_POSTGRES_URL": postgres_url,
        "QQRAG_SHARED_STATE": "redis",
        "QQRAG_REDIS_URL": REDIS_URL,
        "QQRAG_REDIS_PREFIX": redis_prefix,
        "QQRAG_QUOTA_USER_RPM": "3",
        "QQRAG_QUOTA_GROUP_RPM": "0",
        "QQRAG_MAX_INFLIGHT_TURNS": "2",
    }
    with pytest.MonkeyPatch.context() as env:
        # The children inherit this process's environment: no developer's QQRAG_* leaks in.
        drop_developer_settings(env)
        a, b = (
            ServiceProcess(shared | {"QQRAG_DATA_DIR": str(root / name)}, cwd=root)
            for name in ("a", "b")
        )
    # Started together, as replicas are: both create the checkpoint tables at once.
    with ThreadPoolExecutor(2) as pool:
        started = [pool.submit(service.start, 60.0) for service in (a, b)]
    try:
        for future in started:
            future.result()
        yield a, b
    finally:
        a.stop()
        b.stop()


def ask(service: ServiceProcess, text: str, user: str = "30003", **who: str) -> httpx.Response:
    body = {"scene": "group", "group_id": "20002", "user_id": user, "text": text} | who
    return httpx.post(f"{service.url}/v1/chat", json=body, timeout=30)


def test_a_conversation_started_on_one_replica_continues_on_the_other(replicas, postgres_url):
    a, b = replicas
    first = ask(a, "月光扫地机器人的续航有多久？")
    assert first.status_code == 200, first.text
    assert first.json()["thread_id"] == THREAD

    seen = httpx.get(f"{b.url}/v1/threads/{THREAD}", timeout=10).json()["messages"]
    assert [m["content"] for m in seen if m["role"] == "user"] == ["月光扫地机器人的续航有多久？"]

    # "它" alone would retrieve either product's price: only A's turn, read on B, names it.
    second = ask(b, "那它售价多少？").json()
    assert second["answer"] == "月光扫地机器人售价 1299 元，旗舰版带自动集尘座，售价 1799 元[1]。"
    history = httpx.get(f"{a.url}/v1/threads/{THREAD}", timeout=10).json()["messages"]
    assert [m["role"] for m in history] == ["user", "assistant", "user", "assistant"]
    # Each turn prunes the checkpoints before it: one row holds the whole conversation.
    with psycopg.connect(postgres_url) as conn:
        stored = conn.execute("SELECT count(*) FROM checkpoints WHERE thread_id = %s", (THREAD,))
        assert stored.fetchone() == (1,)

    ready = httpx.get(f"{b.url}/readyz", timeout=10).json()
    assert ready["checks"]["postgres"] == ready["checks"]["redis"] == {"ok": True, "status": "ok"}
    assert httpx.delete(f"{b.url}/v1/threads/{THREAD}", timeout=10).json()["deleted"] is True
    assert httpx.get(f"{a.url}/v1/threads/{THREAD}", timeout=10).status_code == 404


def test_one_quota_across_replicas(replicas):
    a, b = replicas
    statuses = [
        ask(service, "星尘打印机保修多久？", user="quota").status_code for service in (a, b, a)
    ]
    assert statuses == [200, 200, 200]

    refused = ask(b, "星尘打印机保修多久？", user="quota")

    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) >= 1
    assert refused.json()["error"]["code"] == "quota_exceeded"
    assert "秒后再试" in refused.json()["error"]["message"]


async def test_the_admission_bound_holds_across_replicas(replicas, fake: FakeOllama):
    a, b = replicas
    fake.latency = LatencyModel(fixed_s=1.0)
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            responses = await asyncio.gather(
                *(
                    client.post(
                        f"{(a, b)[i % 2].url}/v1/chat",
                        json={
                            "scene": "private",
                            "user_id": f"burst{i}",
                            "text": "星尘打印机保修多久？",
                        },
                    )
                    for i in range(8)
                )
            )
    finally:
        fake.latency = LatencyModel()

    assert sorted(r.status_code for r in responses) == [200, 200, 503, 503, 503, 503, 503, 503]
    busy = next(r for r in responses if r.status_code == 503)
    assert busy.json()["error"]["code"] == "busy"
    # Busy replies came back at once, not after the model's second.
    assert all(r.elapsed.total_seconds() < 0.9 for r in responses if r.status_code == 503)


def test_a_bad_postgres_url_stops_the_service_naming_the_setting(tmp_path: Path):
    env = {
        "QQRAG_DATA_DIR": str(tmp_path / "data"),
        "QQRAG_DEFAULT_DOCS": str(FIXTURES / "kb"),
        "QQRAG_CHECKPOINTER": "postgres",
        "QQRAG_POSTGRES_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/qqrag",
    }
    with pytest.raises(RuntimeError, match="service exited early") as failed:
        ServiceProcess(env, cwd=tmp_path).start()
    assert "检查点数据库 PostgreSQL 不可用（请检查 QQRAG_POSTGRES_URL）" in str(failed.value)


async def test_postgres_without_a_url_names_the_setting(tmp_path: Path):
    settings = Settings(data_dir=tmp_path, checkpointer="postgres", _env_file=None)  # type: ignore[call-arg]
    with pytest.raises(CheckpointerError, match="必须设置 QQRAG_POSTGRES_URL"):
        async with open_checkpointer(settings):
            pass
