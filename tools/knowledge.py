"""The follow-up knowledge search the answer model can call, built on a backend and a reranker."""

from __future__ import annotations

import asyncio

from langchain_core.tools import StructuredTool
from pydantic import BaseModel, Field

from tools.base import KnowledgeBackend, Passage
from tools.rerank import Reranker, select_evidence

SEARCH_TOOL_NAME = "search_knowledge"


class SearchArgs(BaseModel):
    query: str = Field(description="简短的中文检索语句", min_length=1, max_length=200)


async def find_evidence(
    knowledge: KnowledgeBackend,
    reranker: Reranker,
    query: str,
    *,
    top_k: int,
    top_n: int,
    threshold: float,
) -> list[Passage]:
    """Search, rerank and keep what clears the threshold: the whole retrieval path in one call."""
    candidates = await knowledge.search(query, top_k)
    ranked = await reranker.rerank(query, candidates)
    return select_evidence(ranked, top_n, threshold)


def make_search_tool(
    knowledge: KnowledgeBackend,
    reranker: Reranker,
    *,
    top_k: int,
    top_n: int,
    threshold: float,
    description: str,
) -> StructuredTool:
    """A tool returning evidence passages; the graph's tools node numbers and formats them.

    The description is the prompt the answer model reads about the tool; the caller loads it,
    so this layer knows nothing of prompt files.
    """

    async def search_knowledge(query: str) -> list[Passage]:
        return await find_evidence(
            knowledge, reranker, query, top_k=top_k, top_n=top_n, threshold=threshold
        )

    return StructuredTool.from_function(
        coroutine=search_knowledge,
        name=SEARCH_TOOL_NAME,
        description=description,
        args_schema=SearchArgs,
    )


class MergedKnowledge:
    """Several knowledge bases searched concurrently, as one.

    Merged by reciprocal rank, so bases of different sizes or score scales mix fairly.
    """

    def __init__(self, bases: list[KnowledgeBackend], rrf_k: int = 60) -> None:
        self.bases = bases
        self.name = "+".join(base.name for base in bases)
        self._rrf_k = rrf_k

    async def search(self, query: str, k: int) -> list[Passage]:
        results = await asyncio.gather(*(base.search(query, k) for base in self.bases))
        fused: dict[tuple[str, str], tuple[float, Passage]] = {}
        for passages in results:
            for rank, passage in enumerate(passages, start=1):
                key = (passage["kb"], passage["id"])
                score = fused.get(key, (0.0, passage))[0] + 1.0 / (self._rrf_k + rank)
                fused[key] = (score, passage)
        best = sorted(fused.values(), key=lambda item: item[0], reverse=True)[:k]
        return [Passage(**{**passage, "score": round(score, 6)}) for score, passage in best]

    async def health(self) -> str | None:
        problems = [p for p in await asyncio.gather(*(b.health() for b in self.bases)) if p]
        return "；".join(problems) or None
