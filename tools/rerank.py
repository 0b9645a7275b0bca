"""Rerankers: reorder retrieved passages and give each a 0..1 relevance.

Every strategy normalises to 0..1 so that one relevance threshold means the same thing
whichever strategy a profile picks.
"""

from __future__ import annotations

from typing import Protocol

from agent.text import content_tokens, coverage, tokenize
from tools.base import Passage


class Reranker(Protocol):
    name: str

    async def rerank(self, query: str, passages: list[Passage]) -> list[Passage]:
        """All `passages` with 0..1 scores, best first."""
        ...


def _retrieval_scale(passages: list[Passage]) -> float:
    top = max((p["score"] for p in passages), default=0.0)
    return top if top > 0 else 1.0


class LexicalReranker:
    """Share of the query's topic terms found in the passage, blended with retrieval score.

    Coverage answers "does this passage talk about what was asked?" on an absolute scale, which
    is what a threshold needs; the retrieval score (scaled to the best hit) breaks ties.
    """

    name = "lexical"

    def __init__(self, coverage_weight: float = 0.8) -> None:
        self._weight = coverage_weight

    async def rerank(self, query: str, passages: list[Passage]) -> list[Passage]:
        terms = content_tokens(query) or tokenize(query)
        scale = _retrieval_scale(passages)
        scored = []
        for passage in passages:
            covered = coverage(terms, tokenize(f"{passage['title']} {passage['text']}"))
            retrieval = max(passage["score"], 0.0) / scale
            score = self._weight * covered + (1 - self._weight) * retrieval
            scored.append(Passage(**{**passage, "score": round(score, 4)}))
        return sorted(scored, key=lambda p: p["score"], reverse=True)


class NoReranker:
    """Keeps retrieval order; scores are the retrieval scores scaled to the best hit."""

    name = "none"

    async def rerank(self, query: str, passages: list[Passage]) -> list[Passage]:
        scale = _retrieval_scale(passages)
        return [Passage(**{**p, "score": round(max(p["score"], 0.0) / scale, 4)}) for p in passages]


def select_evidence(ranked: list[Passage], top_n: int, threshold: float) -> list[Passage]:
    """The best `top_n` passages that reach the relevance threshold."""
    return [p for p in ranked if p["score"] >= threshold][:top_n]
