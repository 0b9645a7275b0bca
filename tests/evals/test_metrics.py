"""Per-node metrics on hand-made turns, their empty-denominator edges, tolerances, comparison."""

from __future__ import annotations

import math
from typing import Any

import pytest

from agent.state import Citation, Verdict
from agent.turns import TurnResult
from evals.metrics import (
    METRICS,
    CaseOutcome,
    Check,
    Expect,
    Tolerance,
    TurnOutcome,
    TurnRecord,
    aggregate,
    answer_tokens,
    char_f1,
    compare,
    gold_ranks,
    ndcg,
    normalize,
    observe,
)
from tools.base import Passage

THRESHOLD = 0.6


def passage(pid: str, title: str, text: str, score: float = 1.0) -> Passage:
    return Passage(id=pid, title=title, source="doc.md", text=text, score=score, kb="t")


GOLD = passage("g1", "端口", "qqrag 服务默认监听 8000 端口。")
OTHER = passage("o1", "天气", "北京今天下雨，气温十度。")
ALSO = passage("a1", "监听地址", "qqrag 的监听地址默认是 127.0.0.1。")


def cite(index: int, p: Passage) -> Citation:
    return Citation(
        index=index, title=p["title"], source=p["source"], passage_id=p["id"], snippet=""
    )


def result(
    answer: str = "",
    *,
    intent: str = "knowledge",
    query: str = "qqrag 默认端口是多少？",
    question: str = "",
    citations: list[Citation] | None = None,
    passages: list[Passage] | None = None,
    verdict: Verdict | None = None,
    model_calls: int = 1,
) -> TurnResult:
    found = passages if passages is not None else [GOLD, OTHER, ALSO]
    return TurnResult(
        answer=answer,
        citations=citations or [],
        intent=intent,
        query=query,
        degraded=False,
        verdict=verdict,
        evidence=found,
        candidates=found,
        ranked=found,
        model_calls=model_calls,
        tokens=100,
        question=question,
    )


def run(expect: Expect, turn: TurnResult, **record: Any) -> tuple[dict[str, Any], list[Check]]:
    text = record.pop("text", "问题")
    return observe(
        expect, TurnRecord(text, turn, turn.answer, **record), support_threshold=THRESHOLD
    )


def failed(checks: list[Check]) -> dict[str, str]:
    return {check.name: check.message for check in checks if not check.ok}


# —— text ——


def test_normalize_ignores_markers_spacing_punctuation_width_and_case():
    assert normalize("1903 年[1]。") == "1903年"
    assert normalize("ＰＩＰ install -e .") == normalize("pip install -e")
    assert normalize("“光荣”和ω-force") == "光荣和ωforce"


def test_answer_tokens_split_cjk_by_character_and_keep_other_words_whole():
    assert answer_tokens("光荣和ω-force开发[2]，2009年") == [
        *"光荣和",
        "ω",
        "force",
        *"开发",
        "2009",
        "年",
    ]


def test_char_f1():
    assert char_f1("光荣和ω-force开发[1]。", "光荣和ω-force") == pytest.approx(10 / 12)
    assert char_f1("1903年", "1903 年") == 1.0
    assert char_f1("", "1903年") == 0.0
    assert char_f1("1903年", "") == 0.0
    assert char_f1("完全无关", "1903年") == 0.0


# —— ranks ——


def test_gold_ranks_match_ids_split_ids_and_titles():
    passages = [passage("x", "A › B", "…"), passage("DEV_1#2", "t", "…"), passage("y", "C", "…")]
    assert gold_ranks(passages, ["DEV_1", "A › B", "missing"]) == [2, 1, None]


def test_ndcg_counts_each_gold_reference_once():
    split = [passage("s1", "A", "…"), passage("s2", "A", "…"), passage("z", "Z", "…")]
    assert ndcg(split, ["A"]) == 1.0  # the section's second chunk adds nothing
    assert ndcg([OTHER, GOLD], ["g1"]) == pytest.approx(1 / math.log2(3))
    assert ndcg([GOLD, OTHER, ALSO], ["g1", "a1"]) == pytest.approx(
        (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    )
    assert ndcg([], ["g1"]) == 0.0


# —— one turn ——


def test_a_cited_answer_scores_every_node():
    verdict = Verdict(supported_ratio=0.5, removed=[], invalid_refs=[], sentences=[], refusal=False)
    turn = result(
        "qqrag 服务默认监听 8000 端口[1]。北京今天下雨[2]。",
        citations=[cite(1, GOLD), cite(2, OTHER)],
        passages=[OTHER, GOLD, ALSO],
        verdict=verdict,
    )
    expect = Expect(
        intent="knowledge",
        gold=("g1",),
        answers=("8000 端口", "九千"),
        contains=("8000",),
        not_contains=("evil",),
        refuse=False,
        cite=True,
        max_model_calls=1,
        query_contains=("端口",),
    )
    obs, checks = run(expect, turn)
    assert failed(checks) == {}
    assert obs["intent_ok"] is True and obs["rewrite_ok"] is True
    assert (obs["recall@1"], obs["recall@5"], obs["rr"]) == (0.0, 1.0, 0.5)
    assert obs["ndcg"] == pytest.approx(1 / math.log2(3), abs=1e-4)
    assert obs["evidence_recall"] == 1.0
    # Both citations are good: one is gold, the other supports its own sentence.
    assert obs["citation_precision"] == 1.0
    assert obs["citation_recall"] == 1.0
    assert obs["supported_ratio"] == 0.5
    assert obs["match"] is True
    assert obs["f1"] == pytest.approx(round(char_f1(turn.answer, "8000 端口"), 4))
    assert (obs["refused"], obs["refuse_expected"]) == (False, False)
    assert (obs["model_calls"], obs["tokens"]) == (1, 100)


def test_citation_precision_counts_unsupported_and_dangling_markers():
    turn = result(
        "qqrag 服务默认监听 8000 端口[1]。qqrag 还支持语音消息和视频通话[2]。另见[3]。",
        citations=[cite(1, GOLD), cite(2, OTHER)],
    )
    obs, _ = run(Expect(gold=("g1",)), turn)
    # [1] gold, [2] neither gold nor supporting, [3] names no citation.
    assert obs["citation_precision"] == pytest.approx(0.3333)


def test_citation_precision_weighs_claims_against_the_question_not_the_search_string():
    # A follow-up searched with the earlier question along: "上海" is in the search string, not
    # in what the user asked now, so the passage about Beijing does not back the claim.
    turn = result(
        "上海今天下雨[1]。",
        query="上海天气怎么样？ 今天下雨吗？",
        question="今天下雨吗？",
        citations=[cite(1, OTHER)],
    )
    obs, _ = run(Expect(gold=("g1",)), turn)
    assert obs["citation_precision"] == 0.0
    obs, _ = run(
        Expect(gold=("g1",)),
        result(
            "上海今天下雨[1]。", query="上海天气怎么样？ 今天下雨吗？", citations=[cite(1, OTHER)]
        ),
    )
    assert obs["citation_precision"] == 1.0


def test_zero_division_edges_give_none():
    obs, checks = run(Expect(), result("你好！", intent="chitchat", passages=[]))
    for key in (
        "recall@1",
        "recall@5",
        "rr",
        "ndcg",
        "evidence_recall",
        "citation_recall",  # no gold
        "citation_precision",  # no citations
        "supported_ratio",  # no verdict
        "match",
        "f1",  # no reference answers
        "intent_ok",
        "rewrite_ok",
        "faithfulness",
        "relevance",
    ):
        assert obs[key] is None, key
    assert checks == []


def test_gold_that_is_never_retrieved_scores_zero_not_none():
    obs, _ = run(Expect(gold=("g1",)), result("没找到", passages=[]))
    assert (obs["recall@5"], obs["rr"], obs["ndcg"], obs["citation_recall"]) == (0, 0, 0, 0)


def test_refusals_blocked_and_not_found():
    blocked = TurnRecord("问", result("抱歉", intent="blocked"), "抱歉", blocked=True)
    not_found = TurnRecord("问", result("知识库里没有找到"), "知识库里没有找到")
    chitchat = TurnRecord("你好", result("你好", intent="chitchat"), "你好")
    command = TurnRecord("/帮助", result("用法", intent="command"), "用法")
    answered = TurnRecord("问", result("答[1]。", citations=[cite(1, GOLD)]), "答[1]。")
    assert blocked.refused and not_found.refused
    assert not (chitchat.refused or command.refused or answered.refused)


def test_failed_checks_say_what_was_expected():
    turn = result("知识库里没有找到相关内容。", query="默认端口", model_calls=3)
    expect = Expect(
        intent="chitchat",
        answers=("8000",),
        contains=("8000", "端口"),
        not_contains=("没有找到",),
        refuse=False,
        cite=True,
        max_model_calls=2,
        query_contains=("qqrag",),
        query_not_contains=("默认",),
    )
    _, checks = run(expect, turn, error="RuntimeError: boom")
    assert failed(checks) == {
        "error": "运行出错：RuntimeError: boom",
        "intent": "意图应为 chitchat，实际 knowledge",
        "query_contains": "检索的问题缺少 qqrag（实际：默认端口）",
        "query_not_contains": "检索的问题不该包含 默认（实际：默认端口）",
        "answers": "回答没有包含参考答案：8000",
        "contains": "回答缺少 8000、端口",
        "not_contains": "回答不应包含 没有找到",
        "refuse": "不应拒答",
        "cite": "回答应带引用",
        "max_model_calls": "模型调用 3 次，超过上限 2",
    }
    # Every check also says what the case expects, failed or passed: the report shows it.
    assert {check.name: check.expected for check in checks} == {
        "error": "运行不出错",
        "intent": "意图为 chitchat",
        "query_contains": "检索的问题包含 qqrag",
        "query_not_contains": "检索的问题不含 默认",
        "answers": "回答包含参考答案之一：8000",
        "contains": "回答包含 8000、端口",
        "not_contains": "回答不包含 没有找到",
        "refuse": "不应拒答",
        "cite": "回答应带引用",
        "max_model_calls": "模型调用不超过 2 次",
    }


def test_a_new_topic_glued_to_the_old_one_is_a_failed_rewrite():
    expect = Expect(query_contains=("火星",), query_not_contains=("端口",))
    glued, checks = run(expect, result("没有找到", query="默认端口？ 火星的首都是哪里？"))
    assert glued["rewrite_ok"] is False
    assert failed(checks) == {
        "query_not_contains": "检索的问题不该包含 端口（实际：默认端口？ 火星的首都是哪里？）"
    }
    alone, checks = run(expect, result("没有找到", query="火星的首都是哪里？"))
    assert alone["rewrite_ok"] is True and failed(checks) == {}
    only_forbidden, _ = run(Expect(query_not_contains=("端口",)), result("答", query="火星？"))
    assert only_forbidden["rewrite_ok"] is True


def test_judge_scores_become_observations():
    turn = result("qqrag 服务默认监听 8000 端口[1]。", citations=[cite(1, GOLD)])
    obs, _ = run(Expect(), turn, judge={"faithfulness": 0.75, "relevance": 1.0, "reason": "好"})
    assert (obs["faithfulness"], obs["relevance"]) == (0.75, 1.0)


# —— aggregation ——


def outcome(case_id: str, *obs: dict[str, Any], failures: bool = False) -> CaseOutcome:
    base = {"refused": False, "refuse_expected": False, "model_calls": 1, "tokens": 10}
    checks = [Check("cite", False, "回答应带引用")] if failures else []
    return CaseOutcome(
        case_id,
        [TurnOutcome("问", "问", "knowledge", "答", base | o, checks) for o in obs],
    )


def test_means_skip_turns_without_a_value_and_count_the_rest():
    metrics = aggregate(
        [outcome("a", {"recall@1": 1.0}, {"recall@1": None}), outcome("b", {"recall@1": 0.0})]
    )
    assert (metrics["retrieve.recall@1"].value, metrics["retrieve.recall@1"].n) == (0.5, 2)
    assert (metrics["retrieve.mrr"].value, metrics["retrieve.mrr"].n) == (None, 0)
    assert metrics["cost.tokens"].value == 10.0
    assert list(metrics) == list(METRICS)


def test_refusal_precision_and_recall_edges():
    def refusal(*turns: tuple[bool, bool]) -> tuple[float | None, float | None]:
        metrics = aggregate(
            [outcome("c", *({"refused": r, "refuse_expected": e} for r, e in turns))]
        )
        return (
            metrics["answer.refusal_precision"].value,
            metrics["answer.refusal_recall"].value,
        )

    assert refusal((False, False)) == (None, None)  # no refusal expected, none given
    assert refusal((True, False)) == (0.0, None)  # refused where nobody expected it
    assert refusal((False, True)) == (None, 0.0)  # expected, never given
    assert refusal((True, True), (True, False), (False, True)) == (0.5, 0.5)


def test_pass_rate_and_an_empty_suite():
    assert aggregate([outcome("a", {}), outcome("b", {}, failures=True)])[
        "cases.pass_rate"
    ].value == (0.5)
    empty = aggregate([])
    assert all(value.value is None and value.n == 0 for value in empty.values())


# —— tolerances and comparison ——


def test_tolerance_parsing():
    assert Tolerance.parse(0.02) == Tolerance(absolute=0.02)
    assert Tolerance.parse("0.5") == Tolerance(absolute=0.5)
    assert Tolerance.parse("10%") == Tolerance(relative=0.1)
    assert Tolerance.parse("10%").allowed(200.0) == pytest.approx(20.0)
    assert str(Tolerance.parse("10%")) == "10%"
    assert str(Tolerance.parse(0)) == "0"
    for bad in (-1, "-5%", "abc", True, None, [1]):
        with pytest.raises(ValueError):
            Tolerance.parse(bad)


def test_metric_changes_against_tolerances():
    before = {"a": outcome("a", {"recall@1": 1.0, "tokens": 100}), "b": outcome("b", {})}
    after = {"a": outcome("a", {"recall@1": 0.0, "tokens": 105}), "b": outcome("b", {})}
    tight = compare(before, after, tolerances={}, before_label="基线", after_label="本次")
    changes = {change.metric.key: change for change in tight.metrics}
    assert changes["retrieve.recall@1"].status == "regressed"
    assert changes["retrieve.recall@1"].delta == -1.0
    assert changes["cost.tokens"].status == "within"  # 5% more, 10% allowed by default
    assert changes["retrieve.mrr"].status == "n/a"
    assert tight.regressed
    loose = compare(
        before,
        after,
        tolerances={"retrieve.recall@1": Tolerance(absolute=1.0)},
        before_label="基线",
        after_label="本次",
    )
    assert not loose.regressed
    assert {c.metric.key: c.status for c in loose.metrics}["retrieve.recall@1"] == "within"
    cheaper = compare(after, before, tolerances={}, before_label="A", after_label="B")
    statuses = {c.metric.key: c.status for c in cheaper.metrics}
    assert (statuses["cost.tokens"], statuses["retrieve.recall@1"]) == ("improved", "improved")


def test_moved_cases_are_named_with_what_moved():
    before = {
        "same": outcome("same", {"recall@1": 1.0}),
        "broke": outcome("broke", {"recall@1": 1.0}),
        "fixed": outcome("fixed", {}, failures=True),
        "reworded": outcome("reworded", {}),
        "gone": outcome("gone", {}),
    }
    after = {
        "same": outcome("same", {"recall@1": 1.0}),
        "broke": outcome("broke", {"recall@1": 0.0}, failures=True),
        "fixed": outcome("fixed", {}),
        "reworded": outcome("reworded", {}),
        "new": outcome("new", {}),
    }
    after["reworded"].turns[0].answer = "换了个说法"
    result = compare(before, after, tolerances={}, before_label="基线", after_label="本次")
    moved = {case.id: case for case in result.moved}
    assert set(moved) == {"broke", "fixed", "reworded"}
    assert moved["broke"].status == "regressed"
    assert moved["broke"].changes[:3] == [
        "新失败",
        "第 1 轮 未通过：回答应带引用",
        "第 1 轮 召回率@1：1 → 0",
    ]
    assert moved["fixed"].status == "improved"
    assert moved["fixed"].changes == ["已修复", "第 1 轮 已通过：回答应带引用"]
    assert (moved["reworded"].status, moved["reworded"].changes) == (
        "changed",
        ["第 1 轮 回答有变化"],
    )
    assert (result.added, result.missing, result.compared) == (["new"], ["gone"], 4)


def test_outcomes_survive_a_json_round_trip():
    case = outcome("a", {"recall@1": 1.0, "match": None}, failures=True)
    again = CaseOutcome.from_json("a", case.as_json())
    assert again.as_json() == case.as_json()
    assert "match" not in case.as_json()["turns"][0]["obs"]  # empty values are not stored
    assert not again.passed


def test_evidence_precision_is_the_share_of_shown_passages_holding_an_answer():
    shown = result(passages=[GOLD, OTHER, ALSO])
    obs, _ = run(Expect(answers=("8000",)), shown)
    assert obs["evidence_precision"] == round(1 / 3, 4)
    # The title counts too: a heading may carry the answer its sentences leave implicit.
    obs, _ = run(Expect(answers=("监听地址",)), shown)
    assert obs["evidence_precision"] == round(1 / 3, 4)
    # Nothing shown, or no reference answer: no value, never a misleading 0.
    assert run(Expect(answers=("8000",)), result(passages=[]))[0]["evidence_precision"] is None
    assert run(Expect(), shown)[0]["evidence_precision"] is None


def test_false_refusal_counts_only_turns_that_should_be_answered():
    refused = result("知识库里没有找到相关内容。")
    answered = result("8000[1]。", citations=[cite(1, GOLD)])
    assert run(Expect(refuse=False), refused)[0]["false_refusal"] is True
    assert run(Expect(refuse=False), answered)[0]["false_refusal"] is False
    # A turn that should be refused, or expects nothing of it, is not in the denominator.
    assert run(Expect(refuse=True), refused)[0]["false_refusal"] is None
    assert run(Expect(), refused)[0]["false_refusal"] is None
