"""`python -m evals.calibrate`: where the lexical relevance gate should sit, measured.

The development half of the public CMRC 2018 questions (`evals.suite.unanswerable_questions`)
is searched in the knowledge base of the `cmrc2018-unanswerable` suite, where every second
question's gold paragraph is withheld. A question is refused when no candidate's weighted
coverage (`tools.rerank.weighted_coverage`) reaches the gate; the gate chosen is the highest
one that refuses at most `FALSE_REFUSAL_BUDGET` of the answerable questions, which refuses the
most unanswerable ones. The held-out half is shown beside it, for honesty, not used.

Both weightings are measured: the base's own term statistics (the embedded base) and jieba's
general-Chinese IDF (MaxKB, whose API tells no statistics): `tools.rerank.LEXICAL_GATE` and
`GENERAL_IDF_GATE` hold their results.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from evals.runner import ingest_suite
from evals.suite import load_suite, unanswerable_questions
from tools.base import TermStatistics
from tools.kb import EmbeddedKB
from tools.rerank import GENERAL_IDF_GATE, LEXICAL_GATE, lexical_shares

FALSE_REFUSAL_BUDGET = 0.03
"""Share of answerable questions the gate may refuse on the development half: the suite's
goal allows 10%, and every answerable question refused is an answer lost."""
TOP_K = 8
"""Candidates per question, as the service's default `top_k`."""


@dataclass(frozen=True)
class Scored:
    best: float
    """The best candidate's weighted coverage."""
    withheld: bool


@dataclass(frozen=True)
class Rates:
    gate: float
    refused: float
    """Share of unanswerable questions refused (refusal recall)."""
    false_refusal: float
    """Share of answerable questions refused."""


async def best_scores(
    kb: EmbeddedKB, questions: Sequence[tuple[str, bool]], stats: TermStatistics | None
) -> list[Scored]:
    scored = []
    for text, withheld in questions:
        shares, _, _ = await lexical_shares(text, await kb.search(text, TOP_K), stats)
        scored.append(Scored(max(shares, default=0.0), withheld))
    return scored


def rates(scored: Sequence[Scored], gate: float) -> Rates:
    unanswerable = [s for s in scored if s.withheld]
    answerable = [s for s in scored if not s.withheld]
    return Rates(
        gate,
        sum(s.best < gate for s in unanswerable) / max(len(unanswerable), 1),
        sum(s.best < gate for s in answerable) / max(len(answerable), 1),
    )


def choose_gate(scored: Sequence[Scored], budget: float = FALSE_REFUSAL_BUDGET) -> Rates:
    """The highest gate (to 0.01) whose false refusals stay within `budget`."""
    candidates = [rates(scored, step / 100) for step in range(0, 101)]
    return max((r for r in candidates if r.false_refusal <= budget), key=lambda r: r.gate)


async def calibrate(folder: Path) -> dict[str, dict[str, Rates]]:
    suite = load_suite("cmrc2018-unanswerable")
    with EmbeddedKB(folder / "kb.sqlite", suite.knowledge.name) as kb:
        ingest_suite(suite, kb, folder)
        halves = {
            half: [(q.text, withheld) for q, _, withheld in unanswerable_questions(development=dev)]
            for half, dev in (("dev", True), ("test", False))
        }
        results: dict[str, dict[str, Rates]] = {}
        weightings = (
            ("知识库自身词频", kb, LEXICAL_GATE),
            ("jieba 通用词频", None, GENERAL_IDF_GATE),
        )
        for weighting, stats, current in weightings:
            dev = await best_scores(kb, halves["dev"], stats)
            test = await best_scores(kb, halves["test"], stats)
            chosen = choose_gate(dev)
            results[weighting] = {
                "dev": chosen,
                "test": rates(test, chosen.gate),
                "current": rates(test, current),
            }
    return results


def main(argv: Sequence[str] | None = None) -> None:
    parse = argparse.ArgumentParser(
        prog="python -m evals.calibrate",
        description="在 CMRC 2018 开发集上标定词面相关度门槛（tools.rerank.LEXICAL_GATE）。",
    )
    parse.parse_args(argv)
    console = Console()
    with tempfile.TemporaryDirectory(prefix="qqrag-calibrate-") as folder:
        results = asyncio.run(calibrate(Path(folder)))
    table = Table(title=f"词面相关度门槛（误拒预算 {FALSE_REFUSAL_BUDGET:.0%}，开发集上选定）")
    columns = (
        "词频来源",
        "选定门槛",
        "开发集 拒答率/误拒率",
        "留出集 拒答率/误拒率",
        "代码中的门槛",
    )
    for column in columns:
        table.add_column(column)
    for weighting, result in results.items():
        dev, test, current = result["dev"], result["test"], result["current"]
        table.add_row(
            weighting,
            f"{dev.gate:.2f}",
            f"{dev.refused:.3f} / {dev.false_refusal:.3f}",
            f"{test.refused:.3f} / {test.false_refusal:.3f}",
            f"{current.gate:.2f}（留出集 {current.refused:.3f} / {current.false_refusal:.3f}）",
        )
    console.print(table)


if __name__ == "__main__":
    main()
