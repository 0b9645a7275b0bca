"""Evaluation suites, their runner, and the fake servers that tests, evals and benchmarks share."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from rich.console import Console

Report = Mapping[str, Any]


def publish(
    report: Report, show: Callable[[Report, Console], None], json_path: Path | None
) -> None:
    """A benchmark's report on the terminal, and as indented JSON when `--json` names a file
    (the bench's and the retrieval eval's)."""
    show(report, Console())
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", "utf-8")
