"""The answer when no model is available: the most relevant sentences, quoted with citations."""

from __future__ import annotations

from agent import prompts
from tools.base import Passage
from tools.text import split_sentences, support_score

MAX_QUOTES = 3


def extractive_answer(query: str, evidence: list[Passage], variant: str = "default") -> str:
    """One quoted sentence from each of the top passages, each ending with its `[n]`."""
    lines = [prompts.render("degraded", variant)]
    for number, passage in enumerate(evidence[:MAX_QUOTES], start=1):
        sentences = split_sentences(passage["text"]) or [passage["text"]]
        # The first sentence wins ties: it usually states the section's subject.
        best = max(sentences, key=lambda s: support_score(query, s))
        lines.append(f"{best.rstrip('。.；;')}[{number}]。")
    return "\n".join(lines)
