"""The audit log: one row per turn, one per turn refused (busy, quota), feedback on answers,
the gaps they reveal, and what administrators removed or changed (documents, tenants, keys)."""

from __future__ import annotations

import functools
import json
import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import sqlite_utils

Rating = Literal["good", "bad"]
RATING_WORDS: dict[str, Rating] = {"好": "good", "good": "good", "差": "bad", "bad": "bad"}

_JSON_COLUMNS = ("candidates", "ranked", "evidence", "cited", "node_seconds", "safety_hits")

Via = Literal["http", "cli"]


@functools.cache
def _insert_sql(columns: tuple[str, ...]) -> str:
    names = ", ".join(f"[{column}]" for column in columns)
    return f"INSERT INTO turns ({names}) VALUES ({', '.join('?' * len(columns))})"


def _like(text: str) -> str:
    """`text` as a LIKE pattern's literal part (ESCAPE '\\')."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _prefix(tenant: str) -> str:
    return _like(f"{tenant}:") + "%"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class AuditLog:
    """SQLite tables written through sqlite-utils; one writer at a time."""

    def __init__(self, path: Path | str) -> None:
        # Writes come from worker threads; the lock below keeps them one at a time.
        self._db = sqlite_utils.Database(sqlite3.connect(path, check_same_thread=False))
        self._db.conn.execute("PRAGMA journal_mode=WAL")
        self._db.conn.execute("PRAGMA synchronous=NORMAL")
        self._lock = threading.Lock()
        self._feedback = self._db.table("feedback")
        self._feedback.create(
            {
                "id": int,
                "thread_id": str,
                "rating": str,
                "comment": str,
                "question": str,
                "answer": str,
                "message_id": str,
                "created_at": str,
            },
            pk="id",
            if_not_exists=True,
        )
        self._feedback.create_index(["thread_id"], if_not_exists=True)
        self._turns = self._db.table("turns")
        self._turns.create(
            {
                "id": int,
                "trace_id": str,
                "tenant": str,
                "thread_id": str,
                "profile": str,
                "intent": str,
                "outcome": str,
                "question": str,
                "query": str,
                "answer": str,
                "answer_chars": int,
                "candidates": str,
                "ranked": str,
                "evidence": str,
                "cited": str,
                "supported_ratio": float,
                "removed_sentences": int,
                "tokens": int,
                "model_calls": int,
                "node_seconds": str,
                "seconds": float,
                "degraded": int,
                "safety_hits": str,
                "feedback": str,
                "feedback_comment": str,
                "created_at": str,
            },
            pk="id",
            if_not_exists=True,
        )
        self._turns.create_index(["tenant", "created_at"], if_not_exists=True)
        self._turns.create_index(["thread_id"], if_not_exists=True)
        # The console's charts read every tenant's turns of the last hours.
        self._turns.create_index(["created_at"], if_not_exists=True)
        self._refusals = self._db.table("refusals")
        self._refusals.create(
            {"id": int, "tenant": str, "code": str, "created_at": str},
            pk="id",
            not_null={"tenant", "code", "created_at"},
            if_not_exists=True,
        )
        self._refusals.create_index(["created_at"], if_not_exists=True)
        self._actions = self._db.table("admin_actions")
        self._actions.create(
            {
                "id": int,
                "via": str,
                "actor": str,
                "actor_tenant": str,
                "action": str,
                "kb": str,
                "target": str,
                "detail": str,
                "created_at": str,
            },
            pk="id",
            not_null={"via", "actor", "action", "target", "detail", "created_at"},
            if_not_exists=True,
        )

    def record_turn(self, row: dict[str, Any]) -> int:
        """Store one turn; list and dict values are kept as JSON text."""
        stored = {
            k: json.dumps(v, ensure_ascii=False) if k in _JSON_COLUMNS else v
            for k, v in row.items()
        }
        stored.setdefault("created_at", _now())
        with self._lock:
            # Plain SQL: sqlite-utils' insert re-reads the schema on every call, which cost
            # more than the write on the per-turn path.
            cursor = self._db.conn.execute(_insert_sql(tuple(stored)), tuple(stored.values()))
            self._db.conn.commit()
            return int(cursor.lastrowid or 0)

    def turns(
        self,
        tenant: str | None = None,
        *,
        thread_id: str | None = None,
        intent: str | None = None,
        degraded: bool | None = None,
        text: str | None = None,
        limit: int = 50,
    ) -> list[dict[str, Any]]:
        """Newest first; `tenant` None means every tenant (admins only). `text` finds turns
        whose question, answer or conversation id (group and QQ number) contain it."""
        clauses: list[str] = []
        args: list[Any] = []
        if tenant is not None:
            clauses.append("tenant = ?")
            args.append(tenant)
        if thread_id is not None:
            clauses.append("thread_id = ?")
            args.append(thread_id)
        if intent is not None:
            clauses.append("intent = ?")
            args.append(intent)
        if degraded is not None:
            clauses.append("degraded = ?")
            args.append(int(degraded))
        if text:
            pattern = f"%{_like(text)}%"
            clauses.append(
                "(question LIKE ? ESCAPE '\\' OR answer LIKE ? ESCAPE '\\'"
                " OR thread_id LIKE ? ESCAPE '\\')"
            )
            args.extend([pattern] * 3)
        where = " AND ".join(clauses) or None
        with self._lock:
            rows = list(
                self._turns.rows_where(where, args or None, order_by="id desc", limit=limit)
            )
        for row in rows:
            for column in _JSON_COLUMNS:
                row[column] = json.loads(row[column]) if row.get(column) else None
        return rows

    def record_refusal(self, tenant: str, code: str) -> None:
        """A turn turned away before it ran (busy, conversation_busy, quota_exceeded,
        storage_full): no turn row, yet the operator sees how often it happens."""
        with self._lock:
            self._db.conn.execute(
                "INSERT INTO refusals (tenant, code, created_at) VALUES (?, ?, ?)",
                (tenant, code, _now()),
            )
            self._db.conn.commit()

    def minutes(self, tenant: str | None, since: datetime) -> list[dict[str, Any]]:
        """Per minute since `since` (UTC): turns, of them degraded and failed (error, timeout),
        their seconds summed and the longest, tokens, and refusals by code. Minutes without
        any are left out. `tenant` None: every tenant's."""
        scope, args = (
            ("", [since.isoformat()])
            if tenant is None
            else (" AND tenant = ?", [since.isoformat(), tenant])
        )
        # created_at is ISO 8601 in UTC: its first 16 characters name the minute.
        turns_sql = (
            "SELECT substr(created_at, 1, 16) AS minute, COUNT(*) AS turns,"
            " SUM(outcome = 'degraded') AS degraded,"
            " SUM(outcome IN ('error', 'timeout')) AS failed,"
            " SUM(seconds) AS seconds, MAX(seconds) AS max_seconds, SUM(tokens) AS tokens"
            f" FROM turns WHERE created_at >= ?{scope} GROUP BY minute"
        )
        refusals_sql = (
            "SELECT substr(created_at, 1, 16) AS minute, code, COUNT(*) FROM refusals"
            f" WHERE created_at >= ?{scope} GROUP BY minute, code"
        )
        by_minute: dict[str, dict[str, Any]] = {}
        with self._lock:
            cursor = self._db.execute(turns_sql, args)
            names = [d[0] for d in cursor.description]
            for values in cursor.fetchall():
                row = dict(zip(names, values, strict=True))
                by_minute[row["minute"]] = row | {"refusals": {}}
            for minute, code, count in self._db.execute(refusals_sql, args).fetchall():
                empty = {"minute": minute, "turns": 0, "degraded": 0, "failed": 0}
                row = by_minute.setdefault(
                    minute,
                    empty | {"seconds": 0.0, "max_seconds": 0.0, "tokens": 0, "refusals": {}},
                )
                row["refusals"][code] = count
        return sorted(by_minute.values(), key=lambda row: row["minute"])

    def gaps(self, tenant: str | None = None, *, days: int = 7) -> list[dict[str, Any]]:
        """Questions the knowledge base could not answer, most asked first.

        One row per user question and what was searched for it: the question is the user's
        own words, and the search string (the same, a rewrite, or a follow-up with the earlier
        questions it leaned on) tells apart the "那它怎么改？" of different conversations.
        """
        since = (datetime.now(UTC) - timedelta(days=days)).isoformat()
        sql = (
            "SELECT question, query, COUNT(*) AS times, MAX(created_at) AS last_asked "
            "FROM turns WHERE outcome = 'not_found' AND created_at >= ?"
        )
        args: list[Any] = [since]
        if tenant is not None:
            sql += " AND tenant = ?"
            args.append(tenant)
        sql += " GROUP BY question, query ORDER BY times DESC, last_asked DESC LIMIT 100"
        with self._lock:
            cursor = self._db.execute(sql, args)
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, values, strict=True)) for values in cursor.fetchall()]

    def safety_hits(self, *, days: int = 7) -> dict[str, dict[str, int]]:
        """Sensitive-word hits of the last `days` days by category, then side (question or
        answer): how often each list is triggered, without the words themselves."""
        since = (datetime.now(UTC) - timedelta(days=days)).isoformat()
        sql = (
            "SELECT json_extract(hit.value, '$.category'), json_extract(hit.value, '$.side'),"
            " COUNT(*) FROM turns, json_each(turns.safety_hits) AS hit"
            " WHERE created_at >= ? GROUP BY 1, 2"
        )
        counts: dict[str, dict[str, int]] = {}
        with self._lock:
            for category, side, times in self._db.execute(sql, [since]).fetchall():
                counts.setdefault(category, {})[side] = times
        return counts

    def record_feedback(
        self,
        thread_id: str,
        rating: Rating,
        comment: str,
        *,
        question: str,
        answer: str,
        message_id: str | None = None,
    ) -> int:
        """Store feedback, and mark the thread's latest turn with it."""
        row = {
            "thread_id": thread_id,
            "rating": rating,
            "comment": comment,
            "question": question,
            "answer": answer,
            "message_id": message_id or "",
            "created_at": _now(),
        }
        with self._lock:
            latest = self._db.execute(
                "SELECT MAX(id) FROM turns WHERE thread_id = ? AND intent != 'command'",
                [thread_id],
            ).fetchone()[0]
            if latest is not None:
                self._turns.update(latest, {"feedback": rating, "feedback_comment": comment})
            return int(self._feedback.insert(row).last_rowid or 0)

    def feedback(self, thread_id: str | None = None) -> list[dict[str, Any]]:
        where, args = ("thread_id = ?", [thread_id]) if thread_id else (None, None)
        with self._lock:
            return list(self._feedback.rows_where(where, args, order_by="id"))

    def recent_feedback(
        self, tenant: str | None = None, *, limit: int = 50
    ) -> list[dict[str, Any]]:
        """Ratings and comments, newest first; `tenant` None means every tenant's."""
        where, args = (
            ("thread_id LIKE ? ESCAPE '\\'", [_prefix(tenant)]) if tenant else (None, None)
        )
        with self._lock:
            return list(self._feedback.rows_where(where, args, order_by="id desc", limit=limit))

    def record_action(
        self,
        *,
        via: Via,
        actor: str,
        actor_tenant: str | None,
        action: str,
        target: str,
        kb: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> int:
        """Write down who did what to which document, tenant or key.

        `actor` is the key id over HTTP and the system user on the command line, where
        `actor_tenant` is None: whoever runs the CLI holds the data folder, no key.
        """
        row = {
            "via": via,
            "actor": actor,
            "actor_tenant": actor_tenant,
            "action": action,
            "kb": kb,
            "target": target,
            "detail": json.dumps(detail or {}, ensure_ascii=False),
            "created_at": _now(),
        }
        with self._lock:
            return int(self._actions.insert(row).last_rowid or 0)

    def actions(self, *, limit: int = 50) -> list[dict[str, Any]]:
        """The administrators' actions, newest first."""
        with self._lock:
            rows = list(self._actions.rows_where(order_by="id desc", limit=limit))
        for row in rows:
            row["detail"] = json.loads(row["detail"])
        return rows

    def close(self) -> None:
        self._db.close()
