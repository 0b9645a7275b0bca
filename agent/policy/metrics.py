"""Prometheus metrics of the QA service, in a registry of their own.

With several worker processes (`qqrag serve` with QQRAG_WORKERS > 1) each worker writes its
values to files in `PROMETHEUS_MULTIPROC_DIR` (prometheus_client's multiprocess mode, chosen when
the variable is set before the library is imported), and /metrics adds them up, whichever worker
answers the scrape.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from tools.health import Health, Status

Outcome = Literal["answered", "not_found", "degraded", "blocked", "error", "timeout"]
Side = Literal["question", "answer"]

# Nodes range from a dictionary lookup to a thinking model's answer; turns add them up.
NODE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0)
TURN_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0)
_STATUS_VALUE: dict[Status, float] = {"ok": 1.0, "degraded": 0.5, "down": 0.0}


class Metrics:
    """Every series the service exports; one instance per app, so tests never collide.

    Labels are set where counted, e.g.
    `metrics.turns.labels(intent="question", profile="default", outcome="answered").inc()`;
    `metrics.inflight_turns.track_inprogress()` wraps a turn.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.turns = Counter(
            "qqrag_turns",
            "Turns finished, by intent, profile and outcome "
            "(answered, not_found, degraded, blocked, error).",
            ["intent", "profile", "outcome"],
            registry=registry,
        )
        self.node_seconds = Histogram(
            "qqrag_node_seconds",
            "Seconds spent in each graph node.",
            ["node"],
            buckets=NODE_BUCKETS,
            registry=registry,
        )
        self.turn_seconds = Histogram(
            "qqrag_turn_seconds",
            "Seconds from a question's arrival to its answer.",
            buckets=TURN_BUCKETS,
            registry=registry,
        )
        self.tokens = Counter(
            "qqrag_tokens",
            "Model tokens as Ollama counts them, by profile and kind (prompt, completion).",
            ["profile", "kind"],
            registry=registry,
        )
        self.quota_rejections = Counter(
            "qqrag_quota_rejections",
            "Requests refused by a quota, by the limit hit "
            "(user_rpm, group_rpm, user_daily, group_daily).",
            ["scope"],
            registry=registry,
        )
        self.busy_rejections = Counter(
            "qqrag_busy_rejections",
            "Requests refused because the bound on turns in flight was reached.",
            registry=registry,
        )
        self.conversation_busy = Counter(
            "qqrag_conversation_busy_rejections",
            "Messages refused because their conversation was still being answered and enough "
            "of its messages were waiting already (or waited until the turn deadline).",
            registry=registry,
        )
        self.turn_timeouts = Counter(
            "qqrag_turn_timeouts",
            "Turns abandoned at the turn deadline (QQRAG_TURN_DEADLINE), nothing of them kept.",
            registry=registry,
        )
        self.safety_hits = Counter(
            "qqrag_safety_hits",
            "Sensitive-word hits, by side (question, answer) and category.",
            ["side", "category"],
            registry=registry,
        )
        self.dependency_errors = Counter(
            "qqrag_dependency_errors",
            "Failed calls to a dependency (ollama, maxkb, ...).",
            ["dependency"],
            registry=registry,
        )
        self.dependency_status = Gauge(
            "qqrag_dependency_status",
            "Each dependency at its latest check: 1 ok, 0.5 degraded, 0 down.",
            ["dependency"],
            registry=registry,
            multiprocess_mode="mostrecent",
        )
        self.inflight_turns = Gauge(
            "qqrag_inflight_turns",
            "Turns being answered now.",
            registry=registry,
            multiprocess_mode="livesum",
        )

    def count_turn(self, *, intent: str, profile: str, outcome: Outcome, seconds: float) -> None:
        self.turns.labels(intent=intent, profile=profile, outcome=outcome).inc()
        self.turn_seconds.observe(seconds)

    def count_tokens(self, *, profile: str, prompt: int, completion: int) -> None:
        self.tokens.labels(profile=profile, kind="prompt").inc(prompt)
        self.tokens.labels(profile=profile, kind="completion").inc(completion)

    def count_safety_hits(self, side: Side, categories: list[str]) -> None:
        for category in categories:
            self.safety_hits.labels(side=side, category=category).inc()

    def record_health(self, checks: Mapping[str, Health]) -> None:
        for dependency, health in checks.items():
            self.dependency_status.labels(dependency).set(_STATUS_VALUE[health.status])

    def render(self) -> tuple[bytes, str]:
        """The exposition body and its content type, for a /metrics response."""
        shared = os.environ.get(MULTIPROCESS_ENV)
        if not shared:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=shared)
        return generate_latest(registry), CONTENT_TYPE_LATEST


MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"


def share_between_processes(folder: Path) -> None:
    """Make worker processes started after this call (they inherit the environment) write
    their metrics to `folder`, emptied first: files of an earlier run would add old counts."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    os.environ[MULTIPROCESS_ENV] = str(folder)


_LIVE_GAUGE_FILE = re.compile(r"gauge_live\w+_(\d+)\.db")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def forget_dead_processes(folder: Path) -> list[int]:
    """Drop the live gauges (turns in flight) of processes that are gone; counters and
    histograms stay, they are history. Returns the pids dropped."""
    pids = {
        int(match[1])
        for path in folder.glob("gauge_live*.db")
        if (match := _LIVE_GAUGE_FILE.fullmatch(path.name))
    }
    dead = sorted(pid for pid in pids if not _alive(pid))
    for pid in dead:
        mark_process_dead(pid, str(folder))
    return dead


@contextmanager
def live_gauges_of_this_process() -> Iterator[None]:
    """A worker's lifetime in multiprocess mode. A worker that was killed or crashed left its
    in-flight count behind, and /metrics would keep adding it: the replacement uvicorn starts
    drops it on its way up. A worker that stops cleanly drops its own on the way out."""
    shared = os.environ.get(MULTIPROCESS_ENV)
    if not shared:
        yield
        return
    forget_dead_processes(Path(shared))
    try:
        yield
    finally:
        mark_process_dead(os.getpid(), shared)
