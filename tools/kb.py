"""The embedded knowledge base: passages in SQLite, searched with FTS5 BM25 over jieba tokens,
optionally fused with dense vectors.

Several named knowledge bases can share one database file; every row carries its `kb` name.
FTS5 cannot segment Chinese, so the index holds jieba search-mode tokens joined by spaces and
queries are OR-ed jieba tokens of the question (see `query_tokens`).

With an `Embedder`, every passage also gets a vector (table `vectors`, keyed by passage and
model) and a search fuses the lexical and the dense ranking by reciprocal rank fusion.

A document is known by where it came from (`SourceInfo.origin`: the file's resolved path, or
the name it was uploaded under), and shown under its `source` name: the path relative to the
folder it was first imported from, made longer when another document already has that name.
So two files never share a document, and importing a file again replaces its own passages only.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import multiprocessing
import os
import re
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import closing, contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path, PurePath
from types import TracebackType
from typing import Literal, NamedTuple

import jieba
import numpy as np
import sqlite_utils
from rich.console import Console
from rich.progress import MofNCompleteColumn, Progress, track
from usearch.index import Index

from tools.base import KnowledgeUnavailable, Passage, TermCounts
from tools.embeddings import Embedder, EmbeddingError, passage_text
from tools.health import Health
from tools.ingest import SUPPORTED_SUFFIXES, Chunk, IngestError, chunk_document, read_document
from tools.text import content_tokens, index_text, tokenize

log = logging.getLogger(__name__)

TITLE_WEIGHT = 3.0
TEXT_WEIGHT = 1.0
MAX_QUERY_TOKENS = 64
"""Longer queries keep their first distinct tokens; bounds the cost of pasted documents."""
HYBRID_DEPTH = 50
"""Candidates each ranking (lexical, dense) contributes to the fusion, at least `k`."""
RRF_K = 60
"""Reciprocal rank fusion constant: a passage at rank r of a ranking scores 1 / (RRF_K + r)."""
PARALLEL_TOKENIZE_MIN = 2000
"""A document of at least this many passages is tokenized by one process per core: jieba is
pure Python and takes over 95 % of ingest time, and below this size starting the processes
(each loads jieba's dictionary, about a second) costs more than it saves."""
EXACT_DENSE_MAX = 20_000
"""Up to this many vectors a dense ranking scans them all with numpy: exact, nothing to build,
milliseconds at 1024 dimensions. Above, an HNSW graph (usearch) of int8 copies proposes
candidates and the stored float32 vectors re-rank them: a 1M x 1024 matrix is 4 GiB per
worker and 1M multiply-adds per dimension per query, the graph about 1.2 GiB and a few hundred
distance computations (README, 知识库规模（实测）)."""
GRAPH_CANDIDATES = 2
"""The graph proposes this many times the depth wanted: int8 costs the graph's own top-10 a
quarter of its recall, the exact re-ranking of twice as many candidates wins it back
(recall@10 of exact search 0.72 -> 0.985 on 20k x 1024 synthetic vectors)."""
GRAPH_BATCH = 10_000
"""Vectors read from SQLite and added to the graph at a time: bounds the float32 copies."""
DENSE_RETRY_S = 30.0
"""After a failed query embedding, searches stay lexical this long before trying again, so a
hung Ollama costs one timeout rather than one per search."""


_SEARCH_SQL = f"""
SELECT p.pk, p.id, p.title, p.source, p.text,
       bm25(passages_fts, {TITLE_WEIGHT}, {TEXT_WEIGHT}) AS bm25_rank
FROM passages_fts JOIN passages AS p ON p.pk = passages_fts.rowid
WHERE passages_fts MATCH ? AND p.kb = ?
ORDER BY bm25_rank, p.pk
LIMIT ?
"""

# The same ranking over the whole index first, joined to the passages afterwards: the join of
# every match is most of a search's time on a big index (40k passages: p50 96 -> 24 ms). Exact
# for this knowledge base whenever the file's top rows all belong to it (`_ranked_rows`).
_SEARCH_INDEX_FIRST_SQL = f"""
SELECT p.pk, p.id, p.title, p.source, p.text, p.kb, f.bm25_rank
FROM (
    SELECT rowid, bm25(passages_fts, {TITLE_WEIGHT}, {TEXT_WEIGHT}) AS bm25_rank
    FROM passages_fts WHERE passages_fts MATCH ?
    ORDER BY bm25_rank, rowid
    LIMIT ?
) AS f JOIN passages AS p ON p.pk = f.rowid
ORDER BY f.bm25_rank, p.pk
"""


_UNICODE61_TOKEN = re.compile(r"[^\W_]+")
"""What FTS5's unicode61 tokenizer keeps as one token: runs of letters and digits."""

_SOURCES_SQL = "SELECT source, sha256, passages, ingested_at, origin FROM sources WHERE kb = ?"

_MISSING_VECTORS_SQL = """
SELECT p.pk, p.title, p.text FROM passages AS p
WHERE p.kb = ? AND NOT EXISTS (SELECT 1 FROM vectors AS v WHERE v.pk = p.pk AND v.model = ?)
ORDER BY p.pk
"""

_VECTORS_SQL = """
SELECT v.pk, v.dim, v.vector FROM vectors AS v JOIN passages AS p ON p.pk = v.pk
WHERE p.kb = ? AND v.model = ?
ORDER BY v.pk
"""

# Vector ids are never reused (AUTOINCREMENT), so any insert raises the maximum and any delete
# lowers the count: the pair changes with every write by any connection or process.
_VECTORS_FINGERPRINT_SQL = "SELECT count(*), coalesce(max(id), 0) FROM vectors WHERE model = ?"


_GRAPH_DIM_SQL = """
SELECT v.dim, count(*) FROM vectors AS v JOIN passages AS p ON p.pk = v.pk
WHERE p.kb = ? AND v.model = ? GROUP BY v.dim ORDER BY count(*) DESC, v.dim LIMIT 1
"""

_GRAPH_PKS_SQL = """
SELECT v.pk FROM vectors AS v JOIN passages AS p ON p.pk = v.pk
WHERE p.kb = ? AND v.model = ? AND v.dim = ?
"""

_GRAPH_NEW_SQL = """
SELECT v.id, v.pk, v.vector FROM vectors AS v JOIN passages AS p ON p.pk = v.pk
WHERE p.kb = ? AND v.model = ? AND v.dim = ? AND v.id > ?
ORDER BY v.id
"""


class _DenseIndex(NamedTuple):
    """This knowledge base's vectors for one model: a matrix, or an HNSW graph over them."""

    fingerprint: tuple[int, int]
    pks: np.ndarray
    """Passage rowids, one per matrix row (empty for a graph)."""
    matrix: np.ndarray
    """float32, one L2-normalised row per passage (0 rows for a graph)."""
    graph: Index | None = None
    """int8 vectors keyed by passage rowid, for bases over `EXACT_DENSE_MAX` vectors."""
    last_id: int = 0
    """The highest vector id the graph holds: later rows are the ones to add."""

    @property
    def dim(self) -> int:
        return int(self.graph.ndim) if self.graph is not None else int(self.matrix.shape[1])

    @property
    def size(self) -> int:
        return len(self.graph) if self.graph is not None else len(self.pks)


_NO_PKS = np.zeros(0, dtype=np.int64)
_NO_MATRIX = np.zeros((0, 0), dtype=np.float32)

UPLOAD_PREFIX = "upload:"
"""Origin of a document uploaded over HTTP: the prefix, then the file name it came with."""
DOCUMENT_ID_CHARS = 12


@dataclass(frozen=True)
class SourceInfo:
    """One ingested document."""

    source: str
    """Its name in citations and lists, unique within the knowledge base."""
    sha256: str
    passages: int
    ingested_at: str
    """UTC time of the last (re)ingestion, ISO 8601."""
    origin: str | None = None
    """What it was imported from: a file's resolved absolute path, or `UPLOAD_PREFIX` and a
    file name. None for a document imported before origins were recorded."""

    @property
    def document_id(self) -> str:
        """Short, stable handle for commands and URLs, where a source name with its slashes is
        awkward: the name never changes, so neither does the id."""
        return document_id(self.source)


def document_id(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()[:DOCUMENT_ID_CHARS]


Action = Literal["add", "replace", "unchanged", "unsupported", "unreadable"]


@dataclass(frozen=True)
class PlannedFile:
    """What an import will do with one file (`EmbeddedKB.plan`)."""

    file: Path
    """As found under the path given, the way the operator names it."""
    origin: str
    source: str
    """The name it is stored under."""
    action: Action
    sha256: str = ""
    stored: SourceInfo | None = None
    """The document it updates or leaves unchanged."""
    wanted: str = ""
    """For an add under a longer name: the relative name another document already has."""
    clash_origin: str | None = None
    """Where that other document came from."""
    reason: str = ""
    """Why an unreadable file cannot be read."""

    @property
    def guessed(self) -> bool:
        """A replacement tied to the stored document by the same name only (its own origin is
        unknown or gone): it may be another file, so an operator confirms it first."""
        return (
            self.action == "replace"
            and self.stored is not None
            and self.stored.origin != self.origin
        )

    @property
    def moved_from(self) -> str | None:
        """For an unchanged document found at a new place: its old origin."""
        stored = self.stored
        if self.action == "unchanged" and stored is not None and stored.origin != self.origin:
            return stored.origin
        return None


@dataclass(frozen=True)
class IngestPlan:
    files: list[PlannedFile]

    @property
    def guesses(self) -> list[PlannedFile]:
        return [item for item in self.files if item.guessed]


@dataclass(frozen=True)
class FileFailure:
    file: str
    reason: str
    """In Chinese, for the operator."""


@dataclass
class IngestReport:
    """What one import did."""

    added_files: int = 0
    unchanged_files: int = 0
    replaced_files: int = 0
    passages_added: int = 0
    passages_removed: int = 0
    vectors_added: int = 0
    """Passages embedded: new ones, and older ones that lacked a vector for the model."""
    seconds: float = 0.0
    unsupported: list[str] = field(default_factory=list)
    """Files of a type the knowledge base does not read, left alone."""
    failed: list[FileFailure] = field(default_factory=list)
    """Files left out; what the knowledge base held for them stays as it was."""
    vectors_error: str | None = None
    """Why the new passages got no vectors (Ollama): they are searchable by keyword meanwhile,
    and `reindex_vectors` (or the next import) fills the vectors in."""

    def raise_on_problems(self) -> None:
        """For callers that need every file and every vector in (evaluations): what went wrong,
        raised as the error it would have been."""
        if self.failed:
            raise IngestError("；".join(f"{f.file}：{f.reason}" for f in self.failed))
        if self.vectors_error is not None:
            raise EmbeddingError(self.vectors_error)


class DocumentConflict(ValueError):
    """An upload's name belongs to another document of the knowledge base."""

    def __init__(self, existing: SourceInfo) -> None:
        super().__init__(existing.source)
        self.existing = existing


def query_tokens(query: str) -> list[str]:
    """Distinct precise-mode jieba tokens of a query, stopwords and interrogatives dropped.

    All tokens when only stopwords are left. Precise mode on the query side because the index
    holds search-mode tokens, which include every precise-mode word: the query still matches,
    but a long compound no longer counts once per sub-word (cmrc2018 recall@1 0.980 -> 0.986).
    """
    tokens = content_tokens(query, search=False) or tokenize(query, search=False)
    return list(dict.fromkeys(tokens))[:MAX_QUERY_TOKENS]


def reciprocal_rank_fusion(rankings: list[list[int]], k: int = RRF_K) -> list[tuple[int, float]]:
    """(key, fused score) best first: the sum over rankings of 1 / (k + rank), rank from 1.

    Ties keep the order in which keys first appear (the first ranking's order first).
    """
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, key in enumerate(ranking, start=1):
            scores[key] = scores.get(key, 0.0) + 1.0 / (k + rank)
    return sorted(scores.items(), key=lambda item: item[1], reverse=True)


def match_expression(query: str) -> str | None:
    """The FTS5 MATCH expression for a free-text query, None when it has no usable token.

    Each token is a quoted phrase and the phrases are OR-ed, so user text is never read as
    FTS5 syntax.
    """
    tokens = query_tokens(query)
    if not tokens:
        return None
    return " OR ".join('"' + token.replace('"', '""') + '"' for token in tokens)


class EmbeddedKB:
    """A `KnowledgeBackend` stored in a local SQLite file.

    The database file and its directory are created when missing. Searches may run
    concurrently from any number of threads (one connection per thread); writes are serialised.
    With an `embedder` the knowledge base is hybrid: ingestion stores a vector per passage and
    searches fuse BM25 with cosine similarity; without one it is purely lexical.

    `inline`: a lexical `search` queries SQLite on the calling event loop. False sends it to a
    worker thread, for a loop that is not ours to block (the graph hosted by `langgraph dev`).
    """

    def __init__(
        self,
        db_path: Path | str,
        name: str = "default",
        embedder: Embedder | None = None,
        *,
        inline: bool = True,
    ) -> None:
        if not name.strip():
            raise ValueError("knowledge base name must not be empty")
        self.name = name
        self.db_path = Path(db_path)
        self.embedder = embedder
        self.inline = inline
        self._dense: _DenseIndex | None = None
        self._dense_retry_at = 0.0
        self._dense_lock = threading.Lock()
        self._local = threading.local()
        self._connections: dict[threading.Thread, sqlite3.Connection] = {}
        self._connections_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._closed = False
        jieba.initialize()
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self._create_schema(self._conn())

    def __enter__(self) -> EmbeddedKB:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def search(self, query: str, k: int) -> list[Passage]:
        """The `k` best passages for `query`, best first (see `search_sync`)."""
        # A keyword search is a local SQLite query, cheaper than a hand-off to a worker thread;
        # a hybrid one waits on Ollama for the query's embedding, so it leaves the event loop.
        try:
            if self.embedder is None and self.inline:
                return self.search_sync(query, k)
            return await asyncio.to_thread(self.search_sync, query, k)
        except sqlite3.Error as exc:
            # Said like any backend's outage: the turn tells the user, a fallback stands in.
            raise KnowledgeUnavailable(self._unreadable(exc)) from exc

    def search_sync(self, query: str, k: int) -> list[Passage]:
        """The best passages of this knowledge base, higher score first.

        Lexical: BM25 ranking, score -bm25. Hybrid: the BM25 and the cosine rankings (top
        `HYBRID_DEPTH` of each) fused by `reciprocal_rank_fusion`, score the fused score; when
        the query cannot be embedded (Ollama down) the BM25 ranking alone, scored the same way.
        A query without a single word character finds nothing either way.
        """
        match = match_expression(query)
        if match is None or k <= 0:
            return []
        conn = self._conn()
        if self.embedder is None:
            rows = self._ranked_rows(conn, match, k)
            return [self._passage(row, round(-row["bm25_rank"], 4)) for row in rows]
        depth = max(k, HYBRID_DEPTH)
        rows = self._ranked_rows(conn, match, depth)
        rankings = [[row["pk"] for row in rows]]
        if (dense := self._dense_ranking(self.embedder, query, depth)) is not None:
            rankings.append(dense)
        fused = reciprocal_rank_fusion(rankings)[:k]
        by_pk = {row["pk"]: row for row in rows}
        if missing := [pk for pk, _ in fused if pk not in by_pk]:
            marks = ", ".join("?" * len(missing))
            found = conn.execute(
                f"SELECT pk, id, title, source, text FROM passages WHERE pk IN ({marks})", missing
            )
            by_pk.update((row["pk"], row) for row in found)
        return [self._passage(by_pk[pk], round(score, 6)) for pk, score in fused if pk in by_pk]

    def _ranked_rows(self, conn: sqlite3.Connection, match: str, limit: int) -> list[sqlite3.Row]:
        """The `limit` best BM25 rows of this knowledge base, by rank then rowid."""
        rows = conn.execute(_SEARCH_INDEX_FIRST_SQL, (match, limit)).fetchall()
        if all(row["kb"] == self.name for row in rows):
            return rows
        # Another knowledge base of the file holds some of the top rows: rank among ours only.
        return conn.execute(_SEARCH_SQL, (match, self.name, limit)).fetchall()

    async def term_counts(self, terms: Sequence[str]) -> TermCounts | None:
        """How many passages hold each term, and how many there are, over the whole database
        file (every knowledge base in it: FTS5 keeps its vocabulary per index, not per base).

        None when the database cannot be read: the statistics only weigh terms, and the
        search that needs them reports the failure.
        """
        try:
            if self.inline:
                return self._term_counts(terms)
            return await asyncio.to_thread(self._term_counts, terms)
        except sqlite3.Error as exc:
            log.warning("term statistics unavailable: %s", exc)
            return None

    def _term_counts(self, terms: Sequence[str]) -> TermCounts:
        conn = self._conn()
        # unicode61 split what jieba kept whole ("3.14", "c++", "127.0.0.1") when it indexed
        # it: such a term is looked up by its parts, as rare as its rarest part.
        parts = {t: _UNICODE61_TOKEN.findall(t.lower()) for t in dict.fromkeys(terms)}
        wanted = sorted({part for pieces in parts.values() for part in pieces})
        total = self._passage_total(conn)
        scope = str(self.db_path.resolve())
        if not wanted:
            return TermCounts(total, dict.fromkeys(parts, 0), scope)
        marks = ", ".join("?" * len(wanted))
        rows = conn.execute(
            f"SELECT term, doc FROM passages_vocab WHERE term IN ({marks})", wanted
        ).fetchall()
        found = {row["term"]: row["doc"] for row in rows}
        return TermCounts(
            total,
            {t: min((found.get(p, 0) for p in pieces), default=0) for t, pieces in parts.items()},
            scope,
        )

    def _passage_total(self, conn: sqlite3.Connection) -> int:
        # count(*) walks the table (milliseconds at a million passages); it changes only when
        # someone writes, which data_version (other connections) and total_changes (this one)
        # reveal.
        version = (conn.execute("PRAGMA data_version").fetchone()[0], conn.total_changes)
        # Kept beside the thread's connection, which it describes.
        cached: tuple[tuple[int, int], int] | None = getattr(self._local, "total", None)
        if cached is None or cached[0] != version:
            cached = (version, conn.execute("SELECT count(*) FROM passages").fetchone()[0])
            self._local.total = cached
        return cached[1]

    async def health(self) -> Health:
        """Up when the database opens and holds passages for this knowledge base."""
        try:
            count = await asyncio.to_thread(self.count)
        except sqlite3.Error as exc:
            return Health.down(self._unreadable(exc))
        if count == 0:
            return Health.down(f"知识库 {self.name} 为空", "先运行 qqrag kb add PATH")
        return Health.up()

    def _unreadable(self, exc: sqlite3.Error) -> str:
        return f"知识库 {self.name} 无法读取（{self.db_path}）：{exc}"

    def add_path(
        self, path: Path | str, *, root: Path | str | None = None, progress: bool = False
    ) -> IngestReport:
        """Ingest a file, or every supported file under a directory: `ingest(plan([path]))`."""
        return self.ingest(self.plan([path], root=root), progress=progress)

    def plan(self, paths: Iterable[Path | str], *, root: Path | str | None = None) -> IngestPlan:
        """What importing `paths` would do, file by file, without changing anything.

        A file is the document stored with its resolved path as origin: unchanged when its
        sha256 is the same, else replaced. Otherwise, when a document already has the file's
        relative name (to `root`, by default the directory given or the file's parent):
        that document's file still exists elsewhere (or it was uploaded), so this is another
        document, added under a longer name; or its file is unknown (imported before origins
        were kept) or gone, and the same name makes them one document: unchanged, or a
        replacement that `PlannedFile.guessed` flags. Hidden files and directories are
        ignored; a file given twice counts once.
        """
        stored = self.sources()
        by_origin = {info.origin: info for info in stored if info.origin}
        by_name = {info.source: info for info in stored}
        # Who holds each name so far: the stored documents, then this plan's files in order.
        holders: dict[str, str | None] = {name: info.origin for name, info in by_name.items()}
        items: list[PlannedFile] = []
        seen: set[str] = set()
        for given in map(Path, paths):
            if not given.exists():
                raise FileNotFoundError(f"no such file or directory: {given}")
            base = Path(root) if root is not None else given if given.is_dir() else given.parent
            for file in _files(given):
                origin = str(file.resolve())
                if origin in seen:
                    continue
                seen.add(origin)
                relative = _source_name(file, base)
                item = _plan_file(file, origin, relative, by_origin, by_name, holders)
                if item.action == "unsupported" and file == given:
                    # Named on its own, not met in a folder: the operator expects it imported.
                    reason = f"不支持的文件格式：{file.suffix or '（没有扩展名）'}"
                    item = replace(item, action="unreadable", reason=reason)
                if item.action in ("add", "replace", "unchanged") and not item.wanted:
                    holders[item.source] = origin
                items.append(item)
        # Longer names last: a file whose own relative name is free keeps it, even when an
        # earlier file of this import would otherwise have been renamed onto it.
        for index, item in enumerate(items):
            if item.wanted:
                source = _longer_name(item.origin, item.wanted, holders)
                holders[source] = item.origin
                items[index] = replace(item, source=source)
        return IngestPlan(items)

    def ingest(self, plan: IngestPlan, *, progress: bool = False) -> IngestReport:
        """Carry out a plan, each file in its own transaction.

        A file that cannot be read, parsed or stored, or that changed since it was planned, is
        left out with its reason in `IngestReport.failed` and the rest goes on. Hybrid: then
        every passage lacking a vector for the embedder's model is embedded, committed batch by
        batch; when Ollama fails the passages stay searchable lexically, the report says why
        (`vectors_error`), and the next import or `reindex_vectors` fills in the vectors.
        """
        started = time.perf_counter()
        report = IngestReport()
        with self._write_lock:
            for item in track(
                plan.files,
                description=f"导入知识库 {self.name}",
                console=Console(stderr=True),
                disable=not progress,
            ):
                self._ingest_planned(item, report)
            self._embed_for(report, progress)
        report.seconds = round(time.perf_counter() - started, 3)
        return report

    def _ingest_planned(self, item: PlannedFile, report: IngestReport) -> None:
        if item.action == "unsupported":
            report.unsupported.append(str(item.file))
            return
        if item.action == "unreadable":
            report.failed.append(FileFailure(str(item.file), item.reason))
            return
        try:
            if item.action == "unchanged":
                self._keep(item)
                report.unchanged_files += 1
                return
            data = item.file.read_bytes()
            if hashlib.sha256(data).hexdigest() != item.sha256:
                raise IngestError("导入过程中文件被改动了，这次没有导入；请重新运行 qqrag kb add")
            self._store(item, data, report)
        except OSError as exc:
            report.failed.append(FileFailure(str(item.file), _unreadable_file(exc)))
        except IngestError as exc:
            report.failed.append(FileFailure(str(item.file), str(exc)))

    def add_upload(self, filename: str, data: bytes) -> tuple[SourceInfo, IngestReport]:
        """Store a document uploaded as `filename` (its last path component), known by that name.

        Uploading the same name again replaces it (or leaves it, when the content is the same).
        `DocumentConflict` when the name belongs to another document, one imported from a file;
        `IngestError` when the content cannot be read or is of an unsupported type.
        """
        started = time.perf_counter()
        name = PurePath(filename.replace("\\", "/")).name.strip()
        if not name or name.startswith("."):
            raise IngestError("文件名为空或以点开头")
        if PurePath(name).suffix.lower() not in SUPPORTED_SUFFIXES:
            raise IngestError(f"不支持的文件格式：{PurePath(name).suffix or '（没有扩展名）'}")
        origin = UPLOAD_PREFIX + name
        digest = hashlib.sha256(data).hexdigest()
        report = IngestReport()
        with self._write_lock:
            known = self._source(name)
            if known is not None and known.sha256 == digest:
                report.unchanged_files += 1
            elif known is not None and known.origin != origin:
                raise DocumentConflict(known)
            else:
                action: Action = "add" if known is None else "replace"
                item = PlannedFile(Path(name), origin, name, action, digest, stored=known)
                self._store(item, data, report)
                self._embed_for(report, progress=False)
        stored = self._source(name)
        assert stored is not None
        report.seconds = round(time.perf_counter() - started, 3)
        return stored, report

    def _embed_for(self, report: IngestReport, progress: bool) -> None:
        if self.embedder is None:
            return
        try:
            report.vectors_added = self._embed_missing(self.embedder, progress)
        except EmbeddingError as exc:
            report.vectors_error = str(exc)

    def reindex_vectors(self, *, rebuild: bool = False, progress: bool = False) -> int:
        """Embed the passages lacking a vector for the embedder's model; returns how many.

        For passages ingested before an embedding model was configured, or under another one.
        `rebuild` first drops this knowledge base's vectors for the model, for a model updated
        under the same name. Raises `EmbeddingError` when Ollama fails (batches already done
        stay committed; the rest count as missing).
        """
        if self.embedder is None:
            raise ValueError(f"knowledge base {self.name} has no embedder")
        with self._write_lock:
            if rebuild:
                conn = self._conn()
                with _transaction(conn):
                    conn.execute(
                        "DELETE FROM vectors WHERE model = ?"
                        " AND pk IN (SELECT pk FROM passages WHERE kb = ?)",
                        (self.embedder.model, self.name),
                    )
            return self._embed_missing(self.embedder, progress)

    def document(self, ref: str) -> SourceInfo | None:
        """A document by its source name or its `SourceInfo.document_id`."""
        return self._source(ref) or next(
            (info for info in self.sources() if info.document_id == ref), None
        )

    def remove_source(self, source: str) -> int:
        """Forget one document; returns how many passages went with it."""
        conn = self._conn()
        with self._write_lock, _transaction(conn):
            return self._delete_source(conn, source)

    def count(self) -> int:
        """Number of passages in this knowledge base."""
        row = self._conn().execute("SELECT count(*) FROM passages WHERE kb = ?", (self.name,))
        return int(row.fetchone()[0])

    def sources(self) -> list[SourceInfo]:
        """The ingested documents, by source name."""
        rows = self._conn().execute(f"{_SOURCES_SQL} ORDER BY source", (self.name,))
        return [SourceInfo(**dict(row)) for row in rows]

    def passages_of(self, source: str) -> list[Passage]:
        """A document's passages in document order (score 0): what a search can find of it."""
        rows = self._conn().execute(
            "SELECT id, title, source, text FROM passages WHERE kb = ? AND source = ?"
            " ORDER BY position",
            (self.name, source),
        )
        return [self._passage(row, 0.0) for row in rows]

    def get(self, passage_id: str) -> Passage | None:
        """One passage by id (score 0), None when this knowledge base has no such passage."""
        row = (
            self._conn()
            .execute(
                "SELECT id, title, source, text FROM passages WHERE kb = ? AND id = ?",
                (self.name, passage_id),
            )
            .fetchone()
        )
        return None if row is None else self._passage(row, 0.0)

    def close(self) -> None:
        """Close every thread's connection; the instance is unusable afterwards."""
        with self._connections_lock:
            self._closed = True
            for conn in self._connections.values():
                conn.close()
            self._connections.clear()

    def _passage(self, row: sqlite3.Row, score: float) -> Passage:
        return Passage(
            id=row["id"],
            title=row["title"],
            source=row["source"],
            text=row["text"],
            score=score,
            kb=self.name,
        )

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        with self._connections_lock:
            if self._closed:
                raise sqlite3.ProgrammingError(f"knowledge base {self.name} is closed")
            # Threads come and go (asyncio's executor, callers' own threads): drop their leftovers.
            for thread in [t for t in self._connections if not t.is_alive()]:
                self._connections.pop(thread).close()
            # check_same_thread=False only so that close() may close every thread's connection.
            conn = sqlite3.connect(self.db_path, timeout=30.0, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            self._connections[threading.current_thread()] = conn
        self._local.conn = conn
        return conn

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        db = sqlite_utils.Database(conn, execute_plugins=False)
        db.enable_wal()
        sources = db.table("sources")
        sources.create(
            {
                "kb": str,
                "source": str,
                "sha256": str,
                "passages": int,
                "ingested_at": str,
                "origin": str,
            },
            pk=("kb", "source"),
            not_null=("kb", "source", "sha256", "passages", "ingested_at"),
            if_not_exists=True,
        )
        if "origin" not in sources.columns_dict:
            self._add_origin(sources)
        sources.create_index(["kb", "origin"], unique=True, if_not_exists=True)
        passages = db.table("passages").create(
            {
                "pk": int,
                "kb": str,
                "id": str,
                "source": str,
                "position": int,
                "title": str,
                "text": str,
            },
            pk="pk",
            not_null=("kb", "id", "source", "position", "title", "text"),
            if_not_exists=True,
        )
        passages.create_index(["kb", "id"], unique=True, if_not_exists=True)
        passages.create_index(["kb", "source"], if_not_exists=True)
        # Tokens arrive pre-split by jieba; unicode61 only has to split on the spaces.
        conn.execute(
            "CREATE VIRTUAL TABLE IF NOT EXISTS passages_fts"
            " USING fts5(title, text, tokenize = 'unicode61 remove_diacritics 2')"
        )
        # Document frequencies straight from the index: nothing to keep in step on writes.
        conn.execute(
            "CREATE VIRTUAL TABLE IF NOT EXISTS passages_vocab USING fts5vocab(passages_fts, row)"
        )
        # One row per (passage, model): float32 little-endian blob of `dim` values.
        conn.execute(
            "CREATE TABLE IF NOT EXISTS vectors (id INTEGER PRIMARY KEY AUTOINCREMENT,"
            " pk INTEGER NOT NULL, model TEXT NOT NULL, dim INTEGER NOT NULL,"
            " vector BLOB NOT NULL)"
        )
        conn.execute("CREATE UNIQUE INDEX IF NOT EXISTS vectors_pk_model ON vectors (pk, model)")
        conn.execute("CREATE INDEX IF NOT EXISTS vectors_model_id ON vectors (model, id)")

    @staticmethod
    def _add_origin(sources: sqlite_utils.db.Table) -> None:
        """Give a sources table from before origins were kept its column: every document there
        has no origin, and the next import of a file under its name adopts it
        (`EmbeddedKB.plan`)."""
        try:
            sources.add_column("origin", str)
        except sqlite3.OperationalError:
            # Another process opening the same file added it first.
            if "origin" not in sources.columns_dict:
                raise

    def _embed_missing(self, embedder: Embedder, progress: bool) -> int:
        conn = self._conn()
        rows = conn.execute(_MISSING_VECTORS_SQL, (self.name, embedder.model)).fetchall()
        with Progress(
            *Progress.get_default_columns(),
            MofNCompleteColumn(),
            console=Console(stderr=True),
            disable=not progress or not rows,
        ) as bar:
            task = bar.add_task(f"生成向量 {self.name}（{embedder.model}）", total=len(rows))
            for start in range(0, len(rows), embedder.batch_size):
                batch = rows[start : start + embedder.batch_size]
                vectors = embedder.embed_sync([passage_text(r["title"], r["text"]) for r in batch])
                dim = int(vectors.shape[1])
                with _transaction(conn):
                    conn.executemany(
                        "INSERT OR REPLACE INTO vectors (pk, model, dim, vector)"
                        " VALUES (?, ?, ?, ?)",
                        [
                            (row["pk"], embedder.model, dim, vector.astype("<f4").tobytes())
                            for row, vector in zip(batch, vectors, strict=True)
                        ],
                    )
                bar.advance(task, len(batch))
        return len(rows)

    def _dense_ranking(self, embedder: Embedder, query: str, depth: int) -> list[int] | None:
        """Passage rowids by cosine similarity to `query`; None when there is nothing to rank
        against or the query cannot be embedded."""
        index = self._dense_index(embedder.model)
        if not index.size or time.monotonic() < self._dense_retry_at:
            return None
        try:
            vector = embedder.embed_sync([query])[0]
        except EmbeddingError as exc:
            self._dense_retry_at = time.monotonic() + DENSE_RETRY_S
            log.warning(
                "dense retrieval unavailable, searching lexically only for %.0f s: %s",
                DENSE_RETRY_S,
                exc,
            )
            return None
        if vector.shape[0] != index.dim:
            log.warning(
                "%s now embeds in %d dimensions, its stored vectors have %d: searching lexically"
                " until reindex_vectors(rebuild=True)",
                embedder.model,
                vector.shape[0],
                index.dim,
            )
            return None
        if index.graph is not None:
            return self._graph_ranking(index.graph, embedder.model, vector, depth)
        scores = index.matrix @ vector
        top = np.argpartition(-scores, depth - 1)[:depth] if len(scores) > depth else None
        candidates = np.arange(len(scores)) if top is None else top
        # lexsort's last key is the primary one: score descending, then rowid for stable ties.
        order = candidates[np.lexsort((index.pks[candidates], -scores[candidates]))]
        return [int(pk) for pk in index.pks[order]]

    def _graph_ranking(self, graph: Index, model: str, vector: np.ndarray, depth: int) -> list[int]:
        """The graph's candidates re-ranked by their exact float32 cosine, `depth` of them."""
        wanted = min(len(graph), GRAPH_CANDIDATES * depth)
        keys = [int(key) for key in graph.search(vector.astype(np.float32), wanted).keys]
        marks = ", ".join("?" * len(keys))
        rows = self._conn().execute(
            f"SELECT pk, vector FROM vectors WHERE model = ? AND pk IN ({marks})", (model, *keys)
        )
        scored = [
            (-float(np.frombuffer(row["vector"], dtype="<f4") @ vector), row["pk"]) for row in rows
        ]
        return [pk for _, pk in sorted(scored)[:depth]]

    def _dense_index(self, model: str) -> _DenseIndex:
        """The cached matrix or graph, brought up to date when the vectors table changed since
        it was loaded."""
        conn = self._conn()
        count, last_id = conn.execute(_VECTORS_FINGERPRINT_SQL, (model,)).fetchone()
        fingerprint = (int(count), int(last_id))
        index = self._dense
        if index is not None and index.fingerprint == fingerprint:
            return index
        with self._dense_lock:
            index = self._dense
            if index is None or index.fingerprint != fingerprint:
                index = self._dense = self._load_dense(conn, model, fingerprint, index)
        return index

    def _load_dense(
        self,
        conn: sqlite3.Connection,
        model: str,
        fingerprint: tuple[int, int],
        old: _DenseIndex | None,
    ) -> _DenseIndex:
        # A model re-pulled under the same name may change dimension: the majority wins, and
        # `_dense_ranking` skips a query vector of another dimension.
        majority = conn.execute(_GRAPH_DIM_SQL, (self.name, model)).fetchone()
        if majority is not None and majority[1] > EXACT_DENSE_MAX:
            dim = int(majority[0])
            graph = old.graph if old is not None and old.graph is not None else None
            if graph is None or graph.ndim != dim:
                graph, last = Index(ndim=dim, metric="ip", dtype="i8"), 0
            else:
                last = old.last_id if old is not None else 0
            last = self._update_graph(conn, graph, model, last)
            return _DenseIndex(fingerprint, _NO_PKS, _NO_MATRIX, graph, last)
        rows = conn.execute(_VECTORS_SQL, (self.name, model)).fetchall()
        dims = Counter(row["dim"] for row in rows).most_common(1)
        rows = [row for row in rows if row["dim"] == dims[0][0]] if dims else []
        pks = np.array([row["pk"] for row in rows], dtype=np.int64)
        matrix = (
            np.stack([np.frombuffer(row["vector"], dtype="<f4") for row in rows])
            if rows
            else _NO_MATRIX
        )
        return _DenseIndex(fingerprint, pks, matrix)

    def _update_graph(self, conn: sqlite3.Connection, graph: Index, model: str, last: int) -> int:
        """Make the graph hold this base's vectors of its dimension: drop the passages gone,
        add (or replace) the rows written after vector id `last`; returns the new `last`."""
        key = (self.name, model, graph.ndim)
        if len(graph):
            current = {row[0] for row in conn.execute(_GRAPH_PKS_SQL, key)}
            if gone := [int(pk) for pk in graph.keys if int(pk) not in current]:
                graph.remove(gone)
        cursor = conn.execute(_GRAPH_NEW_SQL, (*key, last))
        while batch := cursor.fetchmany(GRAPH_BATCH):
            pks = np.array([row["pk"] for row in batch], dtype=np.uint64)
            # A vector written again (reindex, INSERT OR REPLACE) keeps its passage's key.
            if replaced := [int(pk) for pk in pks if graph.contains(int(pk))]:
                graph.remove(replaced)
            vectors = np.stack([np.frombuffer(row["vector"], dtype="<f4") for row in batch])
            graph.add(pks, vectors, threads=os.cpu_count() or 1)
            last = max(last, int(batch[-1]["id"]))
        return last

    def _store(self, item: PlannedFile, data: bytes, report: IngestReport) -> None:
        """Add or replace one document in one transaction, as planned."""
        source = item.source
        chunks = chunk_document(read_document(data, source), source)
        tokens = _index_tokens(chunks)
        conn = self._conn()
        with _transaction(conn):
            # Another process may have written since the plan was made: then this file waits
            # for the next import rather than overwrite what it did not announce.
            current = self._source(source)
            if current != item.stored or (item.stored is None and self._origin_taken(item.origin)):
                raise IngestError(
                    "知识库里的这个文档刚被另一个操作改动过，这次没有导入；请重新运行"
                )
            report.passages_removed += self._delete_source(conn, source)
            for chunk, (title_tokens, text_tokens) in zip(chunks, tokens, strict=True):
                try:
                    cursor = conn.execute(
                        "INSERT INTO passages (kb, id, source, position, title, text)"
                        " VALUES (?, ?, ?, ?, ?, ?)",
                        (self.name, chunk.id, source, chunk.position, chunk.title, chunk.text),
                    )
                except sqlite3.IntegrityError:
                    raise IngestError(
                        f"段落 id {chunk.id} 已被知识库 {self.name} 里的文档"
                        f" {self._source_of(conn, chunk.id)} 使用"
                    ) from None
                conn.execute(
                    "INSERT INTO passages_fts (rowid, title, text) VALUES (?, ?, ?)",
                    (cursor.lastrowid, title_tokens, text_tokens),
                )
            conn.execute(
                "INSERT INTO sources (kb, source, sha256, passages, ingested_at, origin)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (self.name, source, item.sha256, len(chunks), _now(), item.origin),
            )
        report.passages_added += len(chunks)
        if item.stored is None:
            report.added_files += 1
        else:
            report.replaced_files += 1

    def _keep(self, item: PlannedFile) -> None:
        """An unchanged document: only where it now comes from is written down."""
        if item.stored is not None and item.stored.origin != item.origin:
            conn = self._conn()
            with _transaction(conn):
                conn.execute(
                    "UPDATE sources SET origin = ? WHERE kb = ? AND source = ?",
                    (item.origin, self.name, item.source),
                )

    def _source(self, source: str) -> SourceInfo | None:
        row = self._conn().execute(f"{_SOURCES_SQL} AND source = ?", (self.name, source)).fetchone()
        return None if row is None else SourceInfo(**dict(row))

    def _origin_taken(self, origin: str) -> bool:
        row = self._conn().execute(
            "SELECT 1 FROM sources WHERE kb = ? AND origin = ?", (self.name, origin)
        )
        return row.fetchone() is not None

    def _delete_source(self, conn: sqlite3.Connection, source: str) -> int:
        key = (self.name, source)
        conn.execute(
            "DELETE FROM vectors WHERE pk IN (SELECT pk FROM passages WHERE kb = ? AND source = ?)",
            key,
        )
        conn.execute(
            "DELETE FROM passages_fts WHERE rowid IN"
            " (SELECT pk FROM passages WHERE kb = ? AND source = ?)",
            key,
        )
        removed = conn.execute("DELETE FROM passages WHERE kb = ? AND source = ?", key).rowcount
        conn.execute("DELETE FROM sources WHERE kb = ? AND source = ?", key)
        return removed

    def _source_of(self, conn: sqlite3.Connection, passage_id: str) -> str:
        row = conn.execute(
            "SELECT source FROM passages WHERE kb = ? AND id = ?", (self.name, passage_id)
        ).fetchone()
        return str(row["source"]) if row else "?"


def knowledge_base_names(db_path: Path | str) -> list[str]:
    """The knowledge bases that hold documents in a database file; none without the file."""
    if not Path(db_path).exists():
        return []
    with closing(sqlite3.connect(db_path, timeout=30.0)) as conn:
        try:
            return [row[0] for row in conn.execute("SELECT DISTINCT kb FROM sources ORDER BY kb")]
        except sqlite3.OperationalError:
            # No sources table: a file no knowledge base was ever opened on.
            return []


def _index_tokens(chunks: Sequence[Chunk]) -> list[tuple[str, str]]:
    """What the FTS index stores for each chunk: its title's and its text's tokens."""
    titles = [chunk.title for chunk in chunks]
    texts = [chunk.text for chunk in chunks]
    workers = os.cpu_count() or 1
    if len(chunks) < PARALLEL_TOKENIZE_MIN or workers < 2:
        return list(map(index_text, titles, texts))
    # spawn, not fork: the server forks from a process with threads (uvicorn, the executor).
    context = multiprocessing.get_context("spawn")
    try:
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            return list(pool.map(index_text, titles, texts, chunksize=256))
    except BrokenProcessPool as exc:
        # A child cannot start when the main module cannot be re-imported (a script on stdin).
        log.warning("tokenizing in this process only, the worker processes failed: %s", exc)
        return list(map(index_text, titles, texts))


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    # IMMEDIATE takes the write lock up front, so a concurrent writer waits on the busy timeout
    # instead of failing when a deferred transaction tries to upgrade.
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.rollback()
        raise
    conn.commit()


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(
        file
        for file in path.rglob("*")
        if file.is_file() and not any(part.startswith(".") for part in file.relative_to(path).parts)
    )


def _source_name(file: Path, root: Path) -> str:
    relative = Path(os.path.relpath(os.path.abspath(file), os.path.abspath(root)))
    if relative.parts[:1] == ("..",):
        raise ValueError(f"{file} is not under the ingest root {root}")
    return relative.as_posix()


def _plan_file(
    file: Path,
    origin: str,
    relative: str,
    by_origin: dict[str, SourceInfo],
    by_name: dict[str, SourceInfo],
    holders: dict[str, str | None],
) -> PlannedFile:
    if file.suffix.lower() not in SUPPORTED_SUFFIXES:
        return PlannedFile(file, origin, relative, "unsupported")
    try:
        digest = hashlib.sha256(file.read_bytes()).hexdigest()
    except OSError as exc:
        return PlannedFile(file, origin, relative, "unreadable", reason=_unreadable_file(exc))
    known = by_origin.get(origin)
    named = by_name.get(relative)
    # A stored document whose file is unknown or gone is this file's, unless a file of this
    # very import took the name already.
    if (
        known is None
        and named is not None
        and not _still_there(named.origin)
        and holders.get(relative) == named.origin
    ):
        known = named
    if known is not None:
        action: Action = "unchanged" if known.sha256 == digest else "replace"
        return PlannedFile(file, origin, known.source, action, digest, stored=known)
    if relative in holders:
        return PlannedFile(
            file, origin, relative, "add", digest, wanted=relative, clash_origin=holders[relative]
        )
    return PlannedFile(file, origin, relative, "add", digest)


def _still_there(origin: str | None) -> bool:
    """Whether a stored document's origin is a file that exists, or an upload (which no file
    on disk can be)."""
    if origin is None:
        return False
    return origin.startswith(UPLOAD_PREFIX) or Path(origin).exists()


def _longer_name(origin: str, wanted: str, holders: dict[str, str | None]) -> str:
    """`wanted` with as many of the folders above it as make it a name nobody holds: the
    second guide.md becomes b/guide.md; the whole path when nothing shorter is free."""
    parts = PurePath(origin).parts
    for length in range(len(PurePath(wanted).parts) + 1, len(parts)):
        candidate = PurePath(*parts[-length:]).as_posix()
        if candidate not in holders:
            return candidate
    return PurePath(origin).as_posix()


def _unreadable_file(exc: OSError) -> str:
    return f"无法读取这个文件（{exc.strerror or exc}）"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
