from pathlib import Path

import pytest
from langchain_core.messages import AIMessage, AnyMessage, HumanMessage

from agent import commands
from agent.audit import AuditLog
from tools.base import Passage

PASSAGE = Passage(
    id="p1", title="保修", source="kb/a.md", text="整机保修两年。", score=1.0, kb="kb"
)


HISTORY = [HumanMessage("保修多久？"), AIMessage("两年[1]。")]


def run(
    text: str,
    *,
    audit: AuditLog | None = None,
    sources: list[Passage] | None = None,
    history: list[AnyMessage] | None = None,
) -> commands.Reply:
    return commands.run(
        text,
        messages=[*(HISTORY if history is None else history), HumanMessage(text)],
        sources=[PASSAGE] if sources is None else sources,
        thread="t:1",
        message_id="m9",
        variant="default",
        audit=audit,
    )


def test_help_lists_every_command_with_its_usage() -> None:
    reply = run("/帮助").text
    for command in commands.COMMANDS:
        assert f"{command.usage} {command.summary}" in reply


def test_an_unknown_command_lists_the_known_ones() -> None:
    reply = run("/天气").text
    assert "“/天气”" in reply
    assert all(command.usage in reply for command in commands.COMMANDS)


@pytest.mark.parametrize("alias", ["/help", "/HELP", "／帮助"])
def test_aliases_full_width_slash_and_case_reach_the_same_command(alias: str) -> None:
    assert run(alias).text == run("/帮助").text


def test_reset_asks_for_the_conversation_to_be_cleared() -> None:
    assert run("/重置").reset and not run("/帮助").reset


def test_source_shows_the_cited_passage_or_the_usage() -> None:
    assert run("/原文 1").text == "[1] 保修 · kb/a.md\n整机保修两年。"
    assert run("/原文 7").text == "上一条回答只有 1 条引用，请发送 /原文 1 查看它的全文。"
    two = run("/原文 3", sources=[PASSAGE, PASSAGE]).text
    assert "/原文 1 到 /原文 2" in two
    assert "没有引用" in run("/原文 1", sources=[]).text


def test_feedback_records_the_rated_exchange_once(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "audit.sqlite")
    try:
        assert run("/反馈 差 没答到点子上", audit=audit).text == "收到，谢谢你的反馈！"
        [row] = audit.feedback("t:1")
        assert (row["rating"], row["comment"], row["question"], row["answer"]) == (
            "bad",
            "没答到点子上",
            "保修多久？",
            "两年[1]。",
        )
        assert row["message_id"] == "m9"
        assert "用法" in run("/反馈 一般", audit=audit).text
        assert len(audit.feedback("t:1")) == 1
    finally:
        audit.close()


def test_feedback_before_any_answer_says_there_is_nothing_to_rate(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "audit.sqlite")
    try:
        reply = run("/反馈 好", audit=audit, history=[])
        assert reply.text == "还没有可以评价的回答，先问我一个问题吧。"
    finally:
        audit.close()
