from pathlib import Path

from agent.audit import AuditLog


def test_turns_keep_json_columns_and_come_back_newest_first(tmp_path: Path):
    log = AuditLog(tmp_path / "audit.sqlite")
    first = log.record_turn(
        {
            "trace_id": "t1",
            "tenant": "acme",
            "thread_id": "acme:qq:private:1",
            "question": "端口是多少？",
            "outcome": "answered",
            "evidence": [{"id": "p1", "score": 0.9}],
            "node_seconds": {"answer": 0.01},
        }
    )
    second = log.record_turn(
        {"trace_id": "t2", "tenant": "other", "thread_id": "other:qq:private:2", "outcome": "x"}
    )
    assert second == first + 1

    newest, oldest = log.turns()
    assert (newest["trace_id"], oldest["trace_id"]) == ("t2", "t1")
    assert oldest["evidence"] == [{"id": "p1", "score": 0.9}]
    assert oldest["node_seconds"] == {"answer": 0.01}
    assert oldest["created_at"]
    assert [row["trace_id"] for row in log.turns("acme")] == ["t1"]
    log.close()

    # Committed: a second connection (another worker process) sees the rows.
    assert len(AuditLog(tmp_path / "audit.sqlite").turns()) == 2


def test_feedback_marks_the_threads_latest_turn(tmp_path: Path):
    log = AuditLog(tmp_path / "audit.sqlite")
    log.record_turn({"trace_id": "t1", "thread_id": "a:1", "intent": "knowledge"})
    log.record_turn({"trace_id": "t2", "thread_id": "a:1", "intent": "knowledge"})
    log.record_feedback("a:1", "bad", "不对", question="q", answer="a")
    newest, oldest = log.turns(thread_id="a:1")
    assert (newest["feedback"], newest["feedback_comment"]) == ("bad", "不对")
    assert oldest["feedback"] is None
    assert log.feedback("a:1")[0]["rating"] == "bad"
