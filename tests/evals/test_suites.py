"""The shipped suites, the derived CMRC 2018 case files, and the suite loader's checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.policy.safety import SensitiveWords
from evals.metrics import Tolerance
from evals.retrieval import load_questions
from evals.runner import ingest_suite
from evals.suite import (
    SUITES_DIR,
    SuiteError,
    available_suites,
    derived_suites,
    load_suite,
    unanswerable_questions,
)
from tools.kb import EmbeddedKB

SMOKE_KB = SUITES_DIR / "smoke" / "kb"


def test_shipped_suites():
    assert available_suites() == [
        "cmrc2018",
        "cmrc2018-followup",
        "cmrc2018-switch",
        "cmrc2018-unanswerable",
        "smoke",
    ]
    sizes = {name: len(load_suite(name).cases) for name in available_suites()}
    assert sizes == {
        "cmrc2018": 509,
        "cmrc2018-followup": 362,
        "cmrc2018-switch": 362,
        "cmrc2018-unanswerable": 254,
        "smoke": 16,
    }


def test_the_unanswerable_suite_withholds_the_gold_of_every_case_it_wants_refused(
    tmp_path: Path,
):
    suite = load_suite("cmrc2018-unanswerable")
    withheld = suite.knowledge.exclude
    assert len(withheld) == 254
    refused = [case for case in suite.cases if case.turns[0].expect.refuse]
    answered = [case for case in suite.cases if case.turns[0].expect.refuse is False]
    assert len(refused) == len(answered) == 127
    gold = {q.id: q.gold for q in load_questions()}
    assert all(gold[case.id] <= withheld for case in refused)
    assert all(case.turns[0].expect.gold and not gold[case.id] & withheld for case in answered)
    # The held-out half only: the calibration's half never appears in the suite.
    development = {q.id for q, _, _ in unanswerable_questions(development=True)}
    assert not development & {case.id for case in suite.cases}
    # The base the runner builds holds everything but the withheld paragraphs.
    with EmbeddedKB(tmp_path / "kb.sqlite", suite.knowledge.name) as kb:
        ingest_suite(suite, kb, tmp_path)
        assert kb.count() == 1104 - 254
        assert all(kb.get(paragraph) is None for paragraph in sorted(withheld)[:20])
        assert kb.get(next(iter(answered)).turns[0].expect.gold[0]) is not None


@pytest.mark.parametrize(
    "name", ["smoke", "cmrc2018", "cmrc2018-followup", "cmrc2018-switch", "cmrc2018-unanswerable"]
)
def test_every_gold_reference_names_a_passage(name: str):
    assert load_suite(name).unknown_gold() == []


def test_smoke_covers_what_the_issue_asks_for():
    suite = load_suite("smoke")
    turns = [turn for case in suite.cases for turn in case.turns]
    assert len(suite.cases) >= 12
    assert sum(len(case.turns) > 1 for case in suite.cases) >= 6  # multi-turn
    assert any(turn.expect.query_contains for turn in turns)  # follow-ups resolved
    assert any(turn.expect.query_not_contains for turn in turns)  # topic switches searched alone
    assert any(turn.expect.intent == "chitchat" for turn in turns)
    assert any(turn.expect.intent == "command" for turn in turns)
    # A question the docs cannot answer: refused, not blocked.
    assert any(t.expect.refuse and t.expect.intent == "knowledge" for t in turns)
    # The injected instruction sits in a passage of the suite's knowledge base...
    injected = (SMOKE_KB / "maintenance.md").read_text(encoding="utf-8")
    assert "忽略之前的所有指令" in injected and "evil.example" in injected
    assert SMOKE_KB in suite.knowledge.paths
    assert any("evil.example" in turn.expect.not_contains for turn in turns)
    # ...and the sensitive question hits the suite's own word list.
    assert suite.sensitive_words is not None
    words = SensitiveWords.from_dir(suite.sensitive_words)
    sensitive = next(case for case in suite.cases if case.id == "sensitive-question")
    assert words.scan(sensitive.turns[0].text)
    assert sensitive.turns[0].expect.intent == "blocked"
    assert {case.scene for case in suite.cases} == {"group", "private"}


def test_derived_case_files_are_up_to_date_and_credited():
    for relative, text in derived_suites().items():
        assert (SUITES_DIR / relative).read_text(encoding="utf-8") == text, relative
    for name in ("cmrc2018", "cmrc2018-followup", "cmrc2018-switch", "cmrc2018-unanswerable"):
        credit = load_suite(name).credit
        assert "CC BY-SA 4.0" in credit and "Cui et al." in credit


def test_follow_up_cases_replace_the_title_in_turn_two():
    case = load_suite("cmrc2018-followup").cases[0]
    first, second = case.turns
    assert first.text == "我想了解一下战国无双3。"
    assert second.text == "它是由哪两个公司合作开发的？"
    assert second.expect.query_contains == ("战国无双3",)
    assert second.expect.gold == first.expect.gold == ("DEV_0",)
    assert second.expect.answers == ("光荣和ω-force",)


def test_switch_cases_change_topic_twice_and_leave_the_old_titles_behind():
    case = load_suite("cmrc2018-switch").cases[0]
    texts = [turn.text for turn in case.turns]
    assert texts == [
        "我想了解一下战国无双3。",
        "它是由哪两个公司合作开发的？",
        "耶律乙辛在什么时候被封为赵王？",
        "我想了解一下且末玉都机场。",
        "该机场在什么地方？",
    ]
    a, b, c = "战国无双3", "耶律乙辛", "且末玉都机场"
    assert [turn.expect.query_contains for turn in case.turns[1:]] == [(a,), (b,), (c,), (c,)]
    assert [turn.expect.query_not_contains for turn in case.turns] == [
        (),
        (),
        (a,),
        (a, b),
        (a, b),
    ]
    assert [turn.expect.gold for turn in case.turns] == [("DEV_0",)] * 2 + [("DEV_291",)] + [
        ("DEV_617",)
    ] * 2


def test_sample_is_even_and_repeatable():
    suite = load_suite("cmrc2018")
    sample = suite.sample(60)
    assert len(sample.cases) == 60
    assert sample.case_ids() == suite.sample(60).case_ids()
    assert sample.cases[0] == suite.cases[0]
    positions = [suite.case_ids().index(case_id) for case_id in sample.case_ids()]
    assert positions == sorted(positions) and positions[-1] > 490
    assert suite.sample(10_000) is suite
    with pytest.raises(SuiteError, match="至少为 1"):
        suite.sample(0)


# —— the loader ——


def write(tmp_path: Path, body: dict[str, Any], name: str = "mine.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(body, allow_unicode=True), encoding="utf-8")
    return path


def minimal(**extra: Any) -> dict[str, Any]:
    return {
        "name": "mine",
        "version": 3,
        "knowledge_base": {"name": "mine", "paths": [str(SMOKE_KB)]},
        "cases": [{"id": "a", "turns": [{"text": "演示服务什么时候维护？"}]}],
    } | extra


def test_a_suite_file_with_defaults_tolerances_and_jsonl_cases(tmp_path: Path):
    (tmp_path / "cases.jsonl").write_text(
        '{"id": "j1", "turns": [{"text": "你好", "intent": "chitchat"}]}\n\n'
        '{"id": "j2", "user_id": 42, "turns": [{"text": "x", "gold": ["维护"], "cite": true}]}\n',
        encoding="utf-8",
    )
    path = write(
        tmp_path,
        minimal(
            cases="cases.jsonl",
            defaults={"scene": "group", "group_id": 7},
            tolerances={"answer.f1": 0.02, "cost.tokens": "15%"},
        ),
    )
    suite = load_suite(str(path))
    assert (suite.name, suite.version) == ("mine", "3")
    assert suite.tolerances == {
        "answer.f1": Tolerance(absolute=0.02),
        "cost.tokens": Tolerance(relative=0.15),
    }
    first, second = suite.cases
    assert (first.scene, first.group_id, first.user_id) == ("group", "7", "10000")
    assert second.user_id == "42"
    assert second.turns[0].expect.cite is True
    assert second.turns[0].expect.gold == ("维护",)
    assert suite.unknown_gold() == ["维护"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"extra": 1}, "未知字段 'extra'"),
        ({"cases": [{"id": "a", "turns": [{"text": "q", "golds": []}]}]}, "未知字段 'golds'"),
        ({"cases": [{"id": "a", "turns": []}]}, "至少要有一轮"),
        ({"cases": [{"id": "a", "scene": "group", "turns": [{"text": "q"}]}]}, "需要 group_id"),
        ({"cases": [{"id": "a", "turns": [{"text": "q", "intent": "x"}]}]}, "intent"),
        ({"cases": [{"id": "a", "turns": [{"text": "q", "refuse": "yes"}]}]}, "true 或 false"),
        ({"cases": [{"id": "a", "turns": [{"text": "q", "max_model_calls": -1}]}]}, "非负整数"),
        ({"cases": [{"id": "a", "turns": [{"text": ""}]}]}, "非空文本"),
        (
            {
                "cases": [
                    {"id": "a", "turns": [{"text": "q"}]},
                    {"id": "a", "turns": [{"text": "q"}]},
                ]
            },
            "重复",
        ),
        ({"tolerances": {"answer.nope": 0.1}}, "没有指标 'answer.nope'"),
        ({"tolerances": {"answer.f1": -1}}, "tolerances.answer.f1"),
        ({"knowledge_base": {"name": "x", "paths": ["nowhere"]}}, "不存在"),
        ({"knowledge_base": {"name": "x", "paths": []}}, "至少要有一项"),
        (
            # A folder has no row ids to leave out: the exclusion would silently do nothing.
            {"knowledge_base": {"name": "x", "paths": [str(SMOKE_KB)], "exclude": "ids.txt"}},
            "只作用于 paths 里的 .jsonl 文件",
        ),
        ({"version": None}, "缺少 version"),
    ],
)
def test_bad_suites_are_reported_with_their_place(
    tmp_path: Path, change: dict[str, Any], message: str
):
    body = minimal() | change
    if change.get("version", 0) is None:
        del body["version"]
    (tmp_path / "ids.txt").write_text("DEV_0\n", encoding="utf-8")
    path = write(tmp_path, body)
    with pytest.raises(SuiteError, match=message) as error:
        load_suite(str(path))
    assert str(path) in str(error.value)


def test_unknown_suite_names_the_shipped_ones():
    with pytest.raises(SuiteError, match="smoke"):
        load_suite("no-such-suite")
    with pytest.raises(SuiteError, match="找不到套件文件"):
        load_suite("missing.yaml")
