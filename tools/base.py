"""The knowledge interface every backend (embedded SQLite, MaxKB, the wrappers) implements."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple, Protocol, runtime_checkable

from typing_extensions import TypedDict

from tools.health import Health


class KnowledgeUnavailable(Exception):
    """A backend could not search (down, refusing the credentials, misconfigured); `str()`
    tells an operator what to do, in Chinese."""


class KnowledgeMisconfigured(KnowledgeUnavailable):
    """A setting is wrong: searches fail until an operator fixes it, and no fallback stands in."""


class Passage(TypedDict):
    """One retrievable piece of a document, the same shape for every backend."""

    id: str
    """Stable id: re-ingesting the same text yields the same id."""
    title: str
    """Heading path or document title shown in citations."""
    source: str
    """Where it came from: a file path relative to the ingest root, a URL or a MaxKB document."""
    text: str
    """The passage text itself."""
    score: float
    """Backend score; after reranking a 0..1 relevance."""
    kb: str
    """Name of the knowledge base that holds it."""


class Found(list[Passage]):
    """A search's passages found by a stand-in for the configured base (a fallback while it
    is out): they come from other documents, so an answer built on them is degraded."""

    def __init__(self, passages: Iterable[Passage], stand_in: str) -> None:
        super().__init__(passages)
        self.stand_in = stand_in
        """Why the configured base did not answer, in Chinese."""


def stand_in(passages: list[Passage]) -> str:
    """Why a stand-in found `passages` instead of the configured base; empty when it did not."""
    return passages.stand_in if isinstance(passages, Found) else ""


class KnowledgeBackend(Protocol):
    """What the graph needs from a knowledge base."""

    name: str

    async def search(self, query: str, k: int) -> list[Passage]:
        """The `k` best passages for `query`, best first."""
        ...

    async def health(self) -> Health:
        """`up`, or `down` when searches would fail (`misconfigured` for a wrong setting);
        never raises."""
        ...


class TermCounts(NamedTuple):
    """How common some terms are in a knowledge base: what rare-term weighting needs."""

    passages: int
    """Passages in the base."""
    containing: Mapping[str, int]
    """For each term asked about, the passages that contain it (0 when none)."""
    scope: str = ""
    """What the counts cover (an embedded base: its database file, shared by every base in
    it); counts of the same scope are the same counts. Empty: their own."""


@runtime_checkable
class TermStatistics(Protocol):
    """A backend that can tell how common terms are in it (the embedded base can; MaxKB's API
    cannot)."""

    async def term_counts(self, terms: Sequence[str]) -> TermCounts | None:
        """Counts for `terms`, or None when this backend has none to give."""
        ...


def statistics(backend: object) -> TermStatistics | None:
    """The backend, where it can tell how common terms are in it."""
    return backend if isinstance(backend, TermStatistics) else None


async def term_counts(stats: TermStatistics | None, terms: Sequence[str]) -> TermCounts | None:
    """Counts for `terms` from `stats`, None without any."""
    return None if stats is None else await stats.term_counts(terms)
