"""Evaluation suites, their runner, and the fake servers that tests, evals and benchmarks share."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def write_json(path: Path, report: Mapping[str, Any]) -> None:
    """A report as indented JSON (the bench's and the retrieval eval's `--json`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", "utf-8")
