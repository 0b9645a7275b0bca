"""Backends built on backends (merged, with a fallback) and the follow-up knowledge search the
answer model can call, built on a backend and a reranker."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from circuitbreaker import CircuitBreaker, CircuitBreakerError
from langchain_core.tools import StructuredTool
from pydantic import BaseModel, Field

from tools.base import (
    Found,
    KnowledgeBackend,
    KnowledgeMisconfigured,
    KnowledgeUnavailable,
    Passage,
    TermCounts,
    stand_in,
    statistics,
    term_counts,
)
from tools.health import Health
from tools.rerank import Reranker, select_evidence

logger = logging.getLogger(__name__)

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
    ratio: float = 0.0,
) -> list[Passage]:
    """Search, rerank and keep what clears the gate: the whole retrieval path in one call."""
    candidates = await knowledge.search(query, top_k)
    ranked = await reranker.rerank(query, candidates, statistics(knowledge))
    evidence = select_evidence(ranked, top_n, threshold, ratio)
    reason = stand_in(candidates)
    return Found(evidence, reason) if reason else evidence


def make_search_tool(
    knowledge: KnowledgeBackend,
    reranker: Reranker,
    *,
    top_k: int,
    top_n: int,
    threshold: float,
    ratio: float = 0.0,
    description: str,
) -> StructuredTool:
    """A tool returning evidence passages; the graph's tools node numbers and formats them.

    The description is the prompt the answer model reads about the tool; the caller loads it,
    so this layer knows nothing of prompt files.
    """

    async def search_knowledge(query: str) -> list[Passage]:
        return await find_evidence(
            knowledge, reranker, query, top_k=top_k, top_n=top_n, threshold=threshold, ratio=ratio
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

    async def term_counts(self, terms: Sequence[str]) -> TermCounts | None:
        """The bases' counts added up, each scope once (embedded bases in one file report the
        whole file's); None unless every base has them."""
        counts = await asyncio.gather(
            *(term_counts(statistics(base), terms) for base in self.bases)
        )
        if any(count is None for count in counts):
            return None
        scopes: dict[str, TermCounts] = {}
        for index, count in enumerate(counts):
            if count is not None:
                scopes.setdefault(count.scope or f"#{index}", count)
        known = list(scopes.values())
        return TermCounts(
            sum(count.passages for count in known),
            {t: sum(count.containing.get(t, 0) for count in known) for t in terms},
            "+".join(scopes),
        )

    async def health(self) -> Health:
        # One failing base fails the whole search, so the worst base is the merged one's health.
        checks = await asyncio.gather(*(base.health() for base in self.bases))
        if all(check.ok for check in checks):
            return Health.up()
        return Health(
            ok=False,
            serving=all(check.serving for check in checks),
            message="；".join(check.message for check in checks if not check.ok),
            fix="；".join(check.fix for check in checks if not check.ok and check.fix),
            misconfigured=any(check.misconfigured for check in checks),
        )


def _is_outage(kind: type[BaseException], error: BaseException) -> bool:
    return issubclass(kind, KnowledgeUnavailable) and not issubclass(kind, KnowledgeMisconfigured)


class FallbackKnowledge:
    """One backend first; another while the first is out (down, refusing, over its quota).

    What the fallback finds comes as :class:`~tools.base.Found`: it holds other documents, so
    the turn is degraded, and a question it cannot answer is no gap of the primary's. A wrong
    setting (:class:`~tools.base.KnowledgeMisconfigured`) is not hidden behind the fallback: it
    needs an operator. One warning is logged when an outage starts and one when the primary
    answers again.
    """

    def __init__(
        self,
        primary: KnowledgeBackend,
        fallback: KnowledgeBackend,
        *,
        failures: int = 3,
        reset_after: float = 30.0,
    ) -> None:
        self.primary = primary
        self.fallback = fallback
        self.name = primary.name
        self._outage = False
        # After a few failures in a row the primary is skipped for a while, so an outage costs
        # each turn nothing instead of a timeout and retries.
        self.breaker = CircuitBreaker(
            failure_threshold=failures,
            recovery_timeout=reset_after,
            expected_exception=_is_outage,
            name=primary.name,
        )
        self.on_outage: Callable[[str], None] | None = None
        """Told the primary's name when the open circuit skips it (metrics): the primary
        reports the searches it fails itself, a skipped one is as failed to the operator."""

    async def search(self, query: str, k: int) -> list[Passage]:
        try:
            # The library checks for an open circuit in its decorators only, not in `with`.
            if self.breaker.opened:
                if self.on_outage is not None:
                    self.on_outage(self.primary.name)
                raise CircuitBreakerError(self.breaker)
            with self.breaker:
                passages = await self.primary.search(query, k)
        except KnowledgeMisconfigured:
            raise
        except (KnowledgeUnavailable, CircuitBreakerError) as exc:
            reason = (
                f"知识库 {self.primary.name} 接连失败，暂时不去查它"
                if isinstance(exc, CircuitBreakerError)
                else str(exc)
            )
            if not self._outage:
                self._outage = True
                logger.warning(
                    "知识库 %s 不可用，改用知识库 %s：%s",
                    self.primary.name,
                    self.fallback.name,
                    reason,
                )
            return Found(await self.fallback.search(query, k), reason)
        if self._outage:
            self._outage = False
            logger.warning(
                "知识库 %s 恢复了，不再使用知识库 %s。", self.primary.name, self.fallback.name
            )
        return passages

    async def term_counts(self, terms: Sequence[str]) -> TermCounts | None:
        """The primary's: the fallback's documents may differ, and weighing the primary's
        passages by them would skew its scores."""
        return await term_counts(statistics(self.primary), terms)

    async def health(self) -> Health:
        """Degraded while the fallback stands in for the primary, down when it cannot."""
        primary = await self.primary.health()
        if primary.serving or primary.misconfigured:
            return primary
        fallback = await self.fallback.health()
        if not fallback.serving:
            return Health.down(
                f"{primary.message}；备用知识库 {self.fallback.name} 也不可用：{fallback.message}",
                "；".join(fix for fix in (primary.fix, fallback.fix) if fix),
            )
        return Health.degraded(
            f"{primary.message}（已改用知识库 {self.fallback.name}）", primary.fix
        )
