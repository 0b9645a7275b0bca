"""The follow-up knowledge search the answer model can call, built on a backend and a reranker."""

from __future__ import annotations

from langchain_core.tools import StructuredTool
from pydantic import BaseModel, Field

from agent import prompts
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
    variant: str = "default",
) -> StructuredTool:
    """A tool returning evidence passages; the graph's tools node numbers and formats them."""

    async def search_knowledge(query: str) -> list[Passage]:
        return await find_evidence(
            knowledge, reranker, query, top_k=top_k, top_n=top_n, threshold=threshold
        )

    return StructuredTool.from_function(
        coroutine=search_knowledge,
        name=SEARCH_TOOL_NAME,
        description=prompts.load("search_tool", variant),
        args_schema=SearchArgs,
    )
