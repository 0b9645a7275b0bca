"""One Ollama probe for /readyz and doctor, the Redis adapter, and the reused latest checks."""

from __future__ import annotations

import httpx

from agent.health import LatestChecks, OllamaProbe, ollama_health, probe_ollama
from evals.fakes.ollama import FakeOllama
from tools.health import Health


async def test_the_probe_lists_pulled_models_or_says_why_not() -> None:
    async with httpx.AsyncClient(timeout=3.0) as client:
        with FakeOllama(models=("qwen3:8b", "bge-m3:latest")) as fake:
            probe = await probe_ollama(client, fake.url)
        gone = await probe_ollama(client, "http://127.0.0.1:9")
    assert probe.error == "" and probe.has("qwen3:8b") and probe.has("bge-m3")
    assert not probe.has("qwen3:4b")
    assert gone.error == "ConnectError" and not gone.models


def test_ollama_is_degraded_when_unreachable_or_missing_a_model_never_down() -> None:
    url = "http://ollama:11434"
    assert ollama_health(OllamaProbe(url, frozenset({"qwen3:8b"})), ["qwen3:8b"]) == Health.up()
    missing = ollama_health(OllamaProbe(url, frozenset({"qwen3:8b"})), ["qwen3:8b", "qwen3:4b"])
    assert missing == Health.degraded("Ollama 上缺少模型 qwen3:4b", "运行 ollama pull qwen3:4b")
    gone = ollama_health(OllamaProbe(url, error="ConnectError"), ["qwen3:8b"])
    assert gone.status == "degraded" and "无法连接 Ollama（http://ollama:11434）" in gone.message
    assert "ollama serve" in gone.fix


async def test_recent_checks_are_reused_until_they_are_too_old() -> None:
    now = [100.0]
    probes: list[float] = []

    async def check() -> dict[str, Health]:
        probes.append(now[0])
        return {"ollama": Health.up()}

    latest = LatestChecks(check, max_age=10.0, clock=lambda: now[0])
    await latest.recent()
    now[0] += 9.0
    await latest.recent()
    assert probes == [100.0]
    now[0] += 1.0
    await latest.recent()
    await latest.fresh()
    assert probes == [100.0, 110.0, 110.0]
