"""The audit log: what users said about answers (and, with governance, one row per turn)."""

from __future__ import annotations

import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import sqlite_utils

Rating = Literal["good", "bad"]
RATING_WORDS: dict[str, Rating] = {"好": "good", "good": "good", "差": "bad", "bad": "bad"}


class AuditLog:
    """SQLite tables written through sqlite-utils; one writer at a time."""

    def __init__(self, path: Path | str) -> None:
        # Writes come from worker threads; the lock below keeps them one at a time.
        self._db = sqlite_utils.Database(sqlite3.connect(path, check_same_thread=False))
        self._db.conn.execute("PRAGMA journal_mode=WAL")
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
        row = {
            "thread_id": thread_id,
            "rating": rating,
            "comment": comment,
            "question": question,
            "answer": answer,
            "message_id": message_id or "",
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        with self._lock:
            return int(self._feedback.insert(row).last_rowid or 0)

    def feedback(self, thread_id: str | None = None) -> list[dict[str, Any]]:
        where, args = ("thread_id = ?", [thread_id]) if thread_id else (None, None)
        with self._lock:
            return list(self._feedback.rows_where(where, args, order_by="id"))

    def close(self) -> None:
        self._db.close()
