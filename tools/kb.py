"""The embedded knowledge base: passages in SQLite, searched with FTS5 BM25 over jieba tokens.

Several named knowledge bases can share one database file; every row carries its `kb` name.
FTS5 cannot segment Chinese, so the index holds jieba search-mode tokens joined by spaces and
queries are OR-ed jieba tokens of the question (see `query_tokens`).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

import jieba
import sqlite_utils
from rich.console import Console
from rich.progress import track

from agent.text import content_tokens, tokenize
from tools.base import Passage
from tools.ingest import SUPPORTED_SUFFIXES, IngestError, chunk_document

TITLE_WEIGHT = 3.0
TEXT_WEIGHT = 1.0
MAX_QUERY_TOKENS = 64
"""Longer queries keep their first distinct tokens; bounds the cost of pasted documents."""


_SEARCH_SQL = f"""
SELECT p.id, p.title, p.source, p.text,
       bm25(passages_fts, {TITLE_WEIGHT}, {TEXT_WEIGHT}) AS bm25_rank
FROM passages_fts JOIN passages AS p ON p.pk = passages_fts.rowid
WHERE passages_fts MATCH ? AND p.kb = ?
ORDER BY bm25_rank, p.pk
LIMIT ?
"""


@dataclass(frozen=True)
class SourceInfo:
    """One ingested file."""

    source: str
    sha256: str
    passages: int
    ingested_at: str
    """UTC time of the last (re)ingestion, ISO 8601."""


@dataclass
class IngestReport:
    """What one `EmbeddedKB.add_path` call did."""

    added_files: int = 0
    unchanged_files: int = 0
    replaced_files: int = 0
    skipped_files: int = 0
    """Files of an unsupported type."""
    passages_added: int = 0
    passages_removed: int = 0
    seconds: float = 0.0


def query_tokens(query: str) -> list[str]:
    """Distinct precise-mode jieba tokens of a query, stopwords and interrogatives dropped.

    All tokens when only stopwords are left. Precise mode on the query side because the index
    holds search-mode tokens, which include every precise-mode word: the query still matches,
    but a long compound no longer counts once per sub-word (cmrc2018 recall@1 0.980 -> 0.986).
    """
    tokens = content_tokens(query, search=False) or tokenize(query, search=False)
    return list(dict.fromkeys(tokens))[:MAX_QUERY_TOKENS]


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
    """

    def __init__(self, db_path: Path | str, name: str = "default") -> None:
        if not name.strip():
            raise ValueError("knowledge base name must not be empty")
        self.name = name
        self.db_path = Path(db_path)
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
        return await asyncio.to_thread(self.search_sync, query, k)

    def search_sync(self, query: str, k: int) -> list[Passage]:
        """BM25-ranked passages of this knowledge base; score is -bm25, higher is better."""
        match = match_expression(query)
        if match is None or k <= 0:
            return []
        rows = self._conn().execute(_SEARCH_SQL, (match, self.name, k)).fetchall()
        return [self._passage(row, round(-row["bm25_rank"], 4)) for row in rows]

    async def health(self) -> str | None:
        """None when the database opens and holds passages for this knowledge base."""
        try:
            count = await asyncio.to_thread(self.count)
        except sqlite3.Error as exc:
            return f"知识库 {self.name} 无法读取（{self.db_path}）：{exc}"
        if count == 0:
            return f"知识库 {self.name} 为空：先运行 qqrag kb add PATH"
        return None

    def add_path(
        self, path: Path | str, *, root: Path | str | None = None, progress: bool = False
    ) -> IngestReport:
        """Ingest a file, or every supported file under a directory.

        Unchanged files (same sha256) are left alone; a changed file's passages are replaced in
        one transaction. Sources are named by their path relative to `root` (default: the
        directory given, or the file's parent). Hidden files and directories are ignored.
        """
        started = time.perf_counter()
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no such file or directory: {path}")
        base = Path(root) if root is not None else path if path.is_dir() else path.parent
        files = _files(path)
        report = IngestReport()
        with self._write_lock:
            for file in track(
                files,
                description=f"导入知识库 {self.name}",
                console=Console(stderr=True),
                disable=not progress,
            ):
                if file.suffix.lower() in SUPPORTED_SUFFIXES:
                    self._ingest_file(file, _source_name(file, base), report)
                else:
                    report.skipped_files += 1
        report.seconds = round(time.perf_counter() - started, 3)
        return report

    def remove_source(self, source: str) -> int:
        """Forget one ingested file; returns how many passages went with it."""
        conn = self._conn()
        with self._write_lock, _transaction(conn):
            return self._delete_source(conn, source)

    def count(self) -> int:
        """Number of passages in this knowledge base."""
        row = self._conn().execute("SELECT count(*) FROM passages WHERE kb = ?", (self.name,))
        return int(row.fetchone()[0])

    def sources(self) -> list[SourceInfo]:
        """The ingested files, by source name."""
        rows = self._conn().execute(
            "SELECT source, sha256, passages, ingested_at FROM sources WHERE kb = ?"
            " ORDER BY source",
            (self.name,),
        )
        return [SourceInfo(**dict(row)) for row in rows]

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
        db.table("sources").create(
            {"kb": str, "source": str, "sha256": str, "passages": int, "ingested_at": str},
            pk=("kb", "source"),
            not_null=("kb", "source", "sha256", "passages", "ingested_at"),
            if_not_exists=True,
        )
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

    def _ingest_file(self, file: Path, source: str, report: IngestReport) -> None:
        data = file.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        conn = self._conn()
        known = conn.execute(
            "SELECT sha256 FROM sources WHERE kb = ? AND source = ?", (self.name, source)
        ).fetchone()
        if known is not None and known["sha256"] == digest:
            report.unchanged_files += 1
            return
        try:
            content = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise IngestError(f"{source}: not UTF-8 text (byte {exc.start})") from None
        chunks = chunk_document(content, source)
        tokens = [(" ".join(tokenize(c.title)), " ".join(tokenize(c.text))) for c in chunks]
        with _transaction(conn):
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
                        f"{source}: passage id {chunk.id!r} already exists in knowledge base "
                        f"{self.name} (from {self._source_of(conn, chunk.id)})"
                    ) from None
                conn.execute(
                    "INSERT INTO passages_fts (rowid, title, text) VALUES (?, ?, ?)",
                    (cursor.lastrowid, title_tokens, text_tokens),
                )
            conn.execute(
                "INSERT INTO sources (kb, source, sha256, passages, ingested_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (self.name, source, digest, len(chunks), _now()),
            )
        report.passages_added += len(chunks)
        if known is None:
            report.added_files += 1
        else:
            report.replaced_files += 1

    def _delete_source(self, conn: sqlite3.Connection, source: str) -> int:
        key = (self.name, source)
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


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
