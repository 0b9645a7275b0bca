"""A regression run as data: the options it was asked with and what came out of it.

Apart from the runner so that the report, which renders these, does not import the runner,
which writes the report.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agent.context import Context
from evals.metrics import (
    CaseOutcome,
    Check,
    Comparison,
    MetricValue,
    Tolerance,
    TurnRecord,
    aggregate,
)
from evals.suite import Case, Suite

DEFAULT_CHAT_MODEL = "qwen3:8b"
DEFAULT_CONCURRENCY = 4


@dataclass(frozen=True)
class EvalOptions:
    """Everything `qqrag eval` accepts; see `evals/README.md`."""

    suite: str
    """A shipped suite's name (smoke, cmrc2018, cmrc2018-followup) or a suite file."""
    profile: str = "default"
    profiles_path: Path | None = None
    """Gray-release profiles (YAML); default: the service's (QQRAG_PROFILES_PATH)."""
    baseline: Path | None = None
    """Default: evals/baselines/SUITE.PROFILE.json (with a real model: …PROFILE.MODEL.json)."""
    update_baseline: bool = False
    compare: tuple[str, str] | None = None
    """Two profiles, A then B: is B better than A? No baseline is read or written."""
    sample: int | None = None
    concurrency: int = DEFAULT_CONCURRENCY
    ollama_url: str | None = None
    """None: an in-process fake Ollama."""
    chat_model: str = DEFAULT_CHAT_MODEL
    embed_model: str = ""
    rerank_model: str = ""
    judge_model: str | None = None
    tolerances: Mapping[str, Tolerance] = field(default_factory=dict)
    """Override the suite's tolerances for this run."""
    out: Path | None = None
    """Report folder; default evals/reports/."""
    progress: bool = True
    allow_failing: bool = False
    """Failing cases do not fail the run (exit 0 unless something regressed)."""


@dataclass
class CaseRun:
    case: Case
    records: list[TurnRecord]
    checks: list[list[Check]]
    """Every check of every turn, passed or not."""
    outcome: CaseOutcome


@dataclass
class SuiteRun:
    """One profile's run of a suite."""

    profile: str
    context: Context
    cases: list[CaseRun]
    seconds: float

    @property
    def outcomes(self) -> dict[str, CaseOutcome]:
        return {run.case.id: run.outcome for run in self.cases}

    @property
    def metrics(self) -> dict[str, MetricValue]:
        return aggregate([run.outcome for run in self.cases])

    @property
    def errors(self) -> int:
        return sum(record.error is not None for run in self.cases for record in run.records)

    @property
    def degraded(self) -> int:
        return sum(record.result.degraded for run in self.cases for record in run.records)

    def latency(self) -> dict[str, Any]:
        """Wall time per turn and mean time per node, in ms: shown, never compared (they vary
        with the machine and with the concurrency)."""
        records = [record for run in self.cases for record in run.records]
        seconds = np.array([r.seconds for r in records] or [0.0]) * 1000
        nodes: dict[str, list[float]] = {}
        for record in records:
            for node, spent in record.result.node_seconds.items():
                nodes.setdefault(node, []).append(spent * 1000)
        return {
            "turn_ms": {
                "mean": round(float(seconds.mean()), 1),
                "p50": round(float(np.percentile(seconds, 50)), 1),
                "p95": round(float(np.percentile(seconds, 95)), 1),
            },
            "node_ms": {node: round(sum(v) / len(v), 1) for node, v in sorted(nodes.items())},
        }


@dataclass
class EvalOutcome:
    suite: Suite
    runs: list[SuiteRun]
    backend: str
    knowledge: dict[str, Any]
    """The ingested base: name, passages, sources, seconds."""
    comparison: Comparison | None
    baseline: Path | None
    """The baseline compared with, or written."""
    baseline_written: bool
    notes: list[str]
    options: EvalOptions
    reports: list[Path] = field(default_factory=list)
    known_failing: set[str] = field(default_factory=set)
    """Cases that failed in the baseline too: reported as such."""
    unreachable: str | None = None
    """Why the run could not reach its model (every turn degraded), or None."""

    @property
    def failing(self) -> list[str]:
        """Cases of the (last) run with a failed check, in suite order."""
        return [run.case.id for run in self.runs[-1].cases if not run.outcome.passed]

    @property
    def newly_failing(self) -> list[str]:
        return [case for case in self.failing if case not in self.known_failing]

    @property
    def exit_code(self) -> int:
        """0 fine; 1 a regression, a crashed turn, or without a baseline a failing case (unless
        `allow_failing`); 3 the model could not be reached (2, unusable input, is
        `run_eval`'s)."""
        if self.unreachable is not None:
            return 3
        if self.baseline_written:
            return 0
        regressed = self.comparison is not None and self.comparison.regressed
        if regressed or any(run.errors for run in self.runs):
            return 1
        # Against a baseline, newly failing cases count through the pass-rate metric and its
        # tolerance; with nothing to compare with, a failing case fails the run.
        if self.comparison is None and self.failing and not self.options.allow_failing:
            return 1
        return 0
