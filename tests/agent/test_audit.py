from datetime import UTC, datetime, timedelta
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


def test_turns_filter_by_intent_degraded_and_text_and_feedback_by_tenant(tmp_path: Path):
    log = AuditLog(tmp_path / "audit.sqlite")
    log.record_turn(
        {
            "trace_id": "t1",
            "tenant": "acme",
            "thread_id": "acme:qq:group:555:1",
            "intent": "knowledge",
            "question": "端口是多少？",
            "answer": "8000",
            "degraded": 0,
        }
    )
    log.record_turn(
        {
            "trace_id": "t2",
            "tenant": "acme",
            "thread_id": "acme:qq:private:2",
            "intent": "chitchat",
            "question": "100%_好",
            "answer": "你好",
            "degraded": 1,
        }
    )
    log.record_turn({"trace_id": "t3", "tenant": "acme_x", "thread_id": "acme_x:qq:private:3"})

    def found(**filters: object) -> list[str]:
        return [row["trace_id"] for row in log.turns(**filters)]

    assert found(intent="chitchat") == ["t2"]
    assert found(degraded=False) == ["t1"]
    assert found(text="555") == ["t1"] and found(text="8000") == ["t1"]
    # LIKE's own wildcards are plain text in a search.
    assert found(text="%_") == ["t2"] and found(text="0_") == []
    log.record_feedback("acme:qq:private:2", "good", "谢谢", question="q", answer="a")
    log.record_feedback("acme_x:qq:private:3", "bad", "", question="q", answer="a")
    assert [row["comment"] for row in log.recent_feedback("acme")] == ["谢谢"]
    assert len(log.recent_feedback()) == 2


def test_admin_actions_say_who_did_what_and_come_back_newest_first(tmp_path: Path):
    log = AuditLog(tmp_path / "audit.sqlite")
    log.record_action(
        via="http",
        actor="3fa2b1c9d0e1",
        actor_tenant="ops",
        action="document.remove",
        kb="faq",
        target="售后.md",
        detail={"passages": 3},
    )
    log.record_action(
        via="cli", actor="root", actor_tenant=None, action="tenant.remove", target="acme"
    )
    newest, oldest = log.actions()
    assert (newest["action"], newest["actor"], newest["actor_tenant"]) == (
        "tenant.remove",
        "root",
        None,
    )
    assert (oldest["via"], oldest["kb"], oldest["target"], oldest["detail"]) == (
        "http",
        "faq",
        "售后.md",
        {"passages": 3},
    )
    assert oldest["created_at"] and len(log.actions(limit=1)) == 1
    log.close()


def test_gaps_group_the_users_question_with_what_was_searched_for_it(tmp_path: Path):
    log = AuditLog(tmp_path / "audit.sqlite")
    rows = [
        ("火星的首都是哪里？", "火星的首都是哪里？"),
        ("火星的首都是哪里？", "火星的首都是哪里？"),
        ("那它防水吗？", "星尘打印机保修多久？ 那它防水吗？"),
        ("那它防水吗？", "月光扫地机器人续航多久？ 那它防水吗？"),
    ]
    for question, query in rows:
        log.record_turn({"outcome": "not_found", "question": question, "query": query})
    log.record_turn({"outcome": "answered", "question": "端口？", "query": "端口？"})
    gaps = [(g["question"], g["query"], g["times"]) for g in log.gaps()]
    assert gaps[0] == ("火星的首都是哪里？", "火星的首都是哪里？", 2)
    # The same words asked about different things are different gaps.
    assert sorted(gaps[1:]) == [
        ("那它防水吗？", "星尘打印机保修多久？ 那它防水吗？", 1),
        ("那它防水吗？", "月光扫地机器人续航多久？ 那它防水吗？", 1),
    ]
    log.close()


def test_minutes_count_turns_and_refusals_per_minute_and_tenant(tmp_path: Path):
    log = AuditLog(tmp_path / "audit.sqlite")
    at = "2026-01-01T11:05:{:02d}.000+00:00"
    for second, tenant, outcome, seconds in [
        (1, "acme", "answered", 1.0),
        (2, "acme", "degraded", 3.0),
        (3, "other", "timeout", 9.0),
    ]:
        log.record_turn(
            {"tenant": tenant, "outcome": outcome, "seconds": seconds, "tokens": 10}
            | {"created_at": at.format(second)}
        )
    log.record_refusal("acme", "busy")
    since = datetime(2026, 1, 1, 11, 0, tzinfo=UTC)
    (everyone, now) = log.minutes(None, since)
    assert everyone == {
        "minute": "2026-01-01T11:05",
        "turns": 3,
        "degraded": 1,
        "failed": 1,
        "seconds": 13.0,
        "max_seconds": 9.0,
        "tokens": 30,
        "refusals": {},
    }
    # The refusal was recorded just now: a minute of its own, with no turns.
    assert (now["turns"], now["refusals"]) == (0, {"busy": 1})
    acme = log.minutes("acme", since)
    assert [(m["turns"], m["refusals"]) for m in acme] == [(2, {}), (0, {"busy": 1})]
    assert log.minutes("acme", datetime.now(UTC) + timedelta(minutes=1)) == []
