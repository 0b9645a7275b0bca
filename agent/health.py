"""The service's dependencies as Health: one Ollama probe, and the latest checks that
/readyz takes afresh and /metrics reuses for a few seconds."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx

from tools.health import Health

if TYPE_CHECKING:
    from agent.settings import Settings

METRICS_MAX_AGE_S = 10.0
"""How long /metrics reuses the latest checks: a scrape then seldom waits on a probe, and
several Prometheus servers scraping do not multiply the calls to Ollama."""

Checks = dict[str, Health]


@dataclass(frozen=True)
class OllamaProbe:
    """What one look at Ollama's model list (`/api/tags`) found."""

    url: str
    models: frozenset[str] = frozenset()
    error: str = ""
    """Why the list could not be read (the exception's class name); empty when it was."""

    def has(self, model: str) -> bool:
        return model in self.models or f"{model}:latest" in self.models


async def probe_ollama(client: httpx.AsyncClient, url: str) -> OllamaProbe:
    try:
        response = await client.get(f"{url}/api/tags")
        response.raise_for_status()
        listed = response.json().get("models", [])
    except (httpx.HTTPError, ValueError) as exc:
        return OllamaProbe(url, error=exc.__class__.__name__)
    return OllamaProbe(url, frozenset(m.get("model") or m.get("name") or "" for m in listed))


def serving_models(settings: Settings) -> list[str]:
    """The models every turn needs: the answer model and the classifier."""
    return list(dict.fromkeys([settings.chat_model, settings.effective_classify_model]))


def ollama_health(probe: OllamaProbe, models: Iterable[str]) -> Health:
    """Degraded at worst: without Ollama turns are answered with excerpts of the sources."""
    if probe.error:
        return Health.degraded(
            f"无法连接 Ollama（{probe.url}）：{probe.error}；回答将使用原文摘录的降级模式",
            "启动 Ollama（ollama serve），或用 QQRAG_OLLAMA_URL 指向正确的地址",
        )
    missing = sorted(model for model in set(models) if not probe.has(model))
    if missing:
        return Health.degraded(
            f"Ollama 上缺少模型 {', '.join(missing)}",
            "；".join(f"运行 ollama pull {model}" for model in missing),
        )
    return Health.up()


class LatestChecks:
    """The dependencies' latest Health: `fresh()` probes them all, `recent()` reuses a probe
    younger than `max_age` seconds."""

    def __init__(
        self,
        check: Callable[[], Awaitable[Checks]],
        *,
        max_age: float = METRICS_MAX_AGE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._check = check
        self._max_age = max_age
        self._clock = clock
        self._latest: tuple[float, Checks] | None = None

    async def fresh(self) -> Checks:
        checks = await self._check()
        self._latest = (self._clock(), checks)
        return checks

    async def recent(self) -> Checks:
        if self._latest is not None and self._clock() - self._latest[0] < self._max_age:
            return self._latest[1]
        return await self.fresh()
