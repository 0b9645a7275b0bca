"""Rerankers against the fake Ollama: request shapes, 0..1 scores, concurrency and fallbacks."""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from ollama import GenerateResponse

from evals.fakes.ollama import FakeOllama, Fault, LatencyModel, embed_text, overlap
from tools.base import Passage, TermCounts
from tools.embeddings import OllamaEmbedder
from tools.kb import EmbeddedKB
from tools.rerank import (
    LEXICAL_GATE,
    MAX_RERANK_DOCUMENT_CHARS,
    QWEN3_DEFAULT_INSTRUCTION,
    QWEN3_RERANK_PREFIX,
    QWEN3_RERANK_SUFFIX,
    SENTENCE_WINDOW,
    TITLE_SHARE,
    EmbeddingReranker,
    LexicalReranker,
    NoReranker,
    Qwen3Reranker,
    Reranker,
    RerankError,
    calibrated,
    query_terms,
    qwen3_rerank_prompt,
    select_evidence,
    term_weights,
    weighted_coverage,
    yes_probability,
)

EMBED_MODEL = "qwen3-embedding:0.6b"
RERANK_MODEL = "dengcao/Qwen3-Reranker-0.6B:Q8_0"
QUERY = "购买后多久可以申请退款？"


def passage(passage_id: str, title: str, text: str, score: float) -> Passage:
    return Passage(id=passage_id, title=title, source="faq.jsonl", text=text, score=score, kb="t")


PASSAGES = [
    passage("points", "积分规则", "每消费一元获得一个积分，一百积分抵扣一元。", 3.0),
    passage("refund", "退款政策", "购买后七天内可以申请全额退款，超过七天只能退还一半费用。", 2.0),
    passage("hours", "客服时间", "人工客服的工作时间是每天上午九点到晚上九点。", 1.0),
]


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOllama]:
    with FakeOllama() as server:
        yield server


@pytest.fixture
def ollama(fake: FakeOllama) -> Iterator[FakeOllama]:
    fake.reset()
    fake.latency = LatencyModel()
    yield fake
    fake.latency = LatencyModel()


def ids(passages: list[Passage]) -> list[str]:
    return [p["id"] for p in passages]


def check_ranked(ranked: list[Passage], original: list[Passage], *, by_score: bool = True) -> None:
    """Every passage back once, unchanged but for a 0..1 score, best first."""
    assert sorted(ids(ranked)) == sorted(ids(original))
    by_id = {p["id"]: p for p in original}
    for p in ranked:
        assert 0.0 <= p["score"] <= 1.0
        assert {**p, "score": 0} == {**by_id[p["id"]], "score": 0}
    if by_score:
        assert all(a["score"] >= b["score"] for a, b in itertools.pairwise(ranked))


async def test_lexical_and_none_rerankers() -> None:
    lexical = await LexicalReranker().rerank(QUERY, PASSAGES)
    check_ranked(lexical, PASSAGES, by_score=False)
    # Retrieval order stays; the score says how much of the question each passage covers.
    assert [(p["id"], p["score"]) for p in lexical] == [
        ("points", 0.0),
        ("refund", 0.9053),
        ("hours", 0.0),
    ]
    kept = await NoReranker().rerank(QUERY, PASSAGES)
    assert [(p["id"], p["score"]) for p in kept] == [
        ("points", 1.0),
        ("refund", round(2 / 3, 4)),
        ("hours", round(1 / 3, 4)),
    ]
    assert select_evidence(lexical, 1, 0.3) == [lexical[1]]
    assert select_evidence(lexical, 5, 1.01) == []


def scored(*scores: float) -> list[Passage]:
    return [passage(f"p{i}", f"标题{i}", "正文。", score) for i, score in enumerate(scores)]


def test_evidence_is_what_clears_the_gate_and_comes_close_to_the_best() -> None:
    ranked = scored(0.6, 0.95, 0.8, 0.7, 0.9, 0.3)
    # Ranked order kept; 0.6 and 0.7 are under 0.8 × 0.95, 0.3 under the gate; capped at 2.
    assert ids(select_evidence(ranked, 4, 0.5, 0.8)) == ["p1", "p2", "p4"]
    assert ids(select_evidence(ranked, 2, 0.5, 0.8)) == ["p1", "p2"]
    # Without the ratio every passage over the gate is evidence, as before.
    assert ids(select_evidence(ranked, 10, 0.5)) == ["p0", "p1", "p2", "p3", "p4"]
    # The ratio never lets a passage under the gate in: nothing clears it, nothing is evidence.
    assert select_evidence(scored(0.4, 0.2), 4, 0.5, 0.1) == []
    assert select_evidence([], 4, 0.5, 0.8) == []


def test_query_terms_leave_out_interrogatives_glued_to_their_neighbours() -> None:
    # jieba makes one word of 几月 and of 哪几个: no passage holds them, so the base's
    # statistics would make them the rarest terms and the question uncoverable.
    assert query_terms("落山风在每年几月产生？") == ["落山风", "每年", "产生"]
    assert query_terms("嘉兴南站由哪几个部分组成？") == ["嘉兴", "南站", "由", "部分", "组成"]
    assert query_terms("银河又叫什么河？") == ["银河", "河"]
    # A question of nothing but function words keeps them: something must be searched.
    assert query_terms("是什么？") == ["是", "什么"]
    # Whole tokens only: words that merely contain a question character are topics.
    assert query_terms("哪吒的师父是谁？") == ["哪吒", "师父"]
    assert "茶几" in query_terms("小茶几多少钱？") and "几何" in query_terms("几何原本的作者？")
    assert "_" not in query_terms("QQRAG_RELEVANCE_THRESHOLD 默认多少？")


def test_weighted_coverage_weighs_rare_terms_and_looks_at_three_sentences() -> None:
    weights = {"星尘": 4.0, "打印机": 4.0, "保修": 1.0}
    body = 1 - TITLE_SHARE
    # All covered, the heading naming the rare terms: TITLE_SHARE of 8/9 from the heading.
    assert weighted_coverage(weights, "星尘打印机", "保修一年。") == pytest.approx(
        body + TITLE_SHARE * 8 / 9
    )
    assert weighted_coverage(weights, "", "星尘打印机保修一年。") == pytest.approx(body)
    # The rare terms missing: the common one alone covers a ninth of the weight.
    assert weighted_coverage(weights, "", "月光扫地机器人保修两年。") == pytest.approx(body / 9)
    # Scattered over more than SENTENCE_WINDOW sentences, the terms do not add up.
    two = {"星尘": 1.0, "打印机": 1.0}
    far = "星尘很亮。" + "天气不错。" * SENTENCE_WINDOW + "打印机很快。"
    assert weighted_coverage(two, "", far) == pytest.approx(body / 2)
    assert weighted_coverage(two, "", "星尘很亮。打印机很快。") == pytest.approx(body)
    # A term jieba cut differently in the question counts by its character pairs; a Latin
    # word only as a word.
    split = {"蝮是": 1.0, "棕榈蝮是": 1.0}
    assert weighted_coverage(split, "", "棕榈蝮的颜色。") == pytest.approx(body * 2 / 3 / 2)
    assert weighted_coverage({"port": 1.0}, "", "support 很好。") == 0.0
    assert weighted_coverage({}, "标题", "正文。") == 0.0


async def test_a_question_of_two_sentences_is_weighed_sentence_by_sentence() -> None:
    printer = passage("warranty", "星尘打印机 › 保修", "星尘打印机保修两年。", 2.0)
    robot = passage("filter", "月光扫地机器人 › 保养", "扫地机器人的滤网每两个月换一次。", 1.0)
    prices = passage("price", "星尘打印机 › 价格", "星尘打印机售价 1999 元。", 1.0)
    reranker = LexicalReranker()
    two = await reranker.rerank("星尘打印机保修多久？顺便问扫地机器人滤网多久换", [printer, robot])
    # Each half has its passage, and neither is marked down for not answering the other.
    assert all(p["score"] > 0.8 for p in two)
    # Each half keeps its passage under the evidence ratio too: it weighs a passage against
    # the best one for its own half, not the other half's.
    assert ids(select_evidence(two, 4, 0.5, 0.9)) == ["warranty", "filter"]
    # A sentence that leans on the one before is weighed with it: alone, 售价 would answer
    # "那它售价多少？" about any product.
    follow_up = await reranker.rerank("月光扫地机器人多久换滤网？ 那它售价多少？", [prices, robot])
    assert [p["id"] for p in select_evidence(follow_up, 4, 0.5)] == ["filter"]
    # A word that only contains 该 or 此 (应该, 因此) refers to nothing: a second question.
    other = await reranker.rerank(
        "星尘打印机保修多久？扫地机器人滤网应该多久换？", [printer, robot]
    )
    assert all(p["score"] > 0.8 for p in other)


def test_calibration_puts_the_gate_on_one_half() -> None:
    assert calibrated(LEXICAL_GATE) == 0.5
    assert calibrated(0.0) == 0.0 and calibrated(1.0) == 1.0
    assert calibrated(LEXICAL_GATE - 0.01) < 0.5 < calibrated(LEXICAL_GATE + 0.01)


def test_rare_terms_weigh_more_and_missing_ones_no_more_than_the_rarest() -> None:
    counts = TermCounts(1000, {"的话": 900, "铁路": 50, "广三": 1, "火星": 0})
    weights = term_weights(["的话", "铁路", "广三", "火星"], counts)
    assert weights["的话"] < weights["铁路"] < weights["广三"] == weights["火星"]
    # Without the base's statistics: jieba's general IDF, unknown Chinese words the rarest;
    # the table has no Latin words or numbers at all, so they weigh as a typical word.
    general = term_weights(["铁路", "星尘扫地机", "qq", "3.14"], None)
    assert 0 < general["铁路"] < general["星尘扫地机"]
    assert general["qq"] == general["3.14"] < general["星尘扫地机"]


async def test_without_statistics_a_latin_word_does_not_sink_a_question() -> None:
    group = passage("g", "群管理", "群主可以在群设置里添加 QQ 群管理员。", 1.0)
    ranked = await LexicalReranker().rerank("QQ群怎么设置管理员？", [group])
    assert ranked[0]["score"] >= 0.5


async def test_an_off_topic_question_clears_no_gate_in_a_real_base(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "stardust.md").write_text(
        "# 星尘打印机\n\n## 保修\n\n星尘打印机整机保修一年，打印头保修六个月。\n\n"
        "## 价格与购买\n\n星尘打印机售价 899 元，可在官网购买。\n",
        encoding="utf-8",
    )
    (docs / "moonlight.md").write_text(
        "# 月光扫地机器人\n\n月光扫地机器人续航 150 分钟。\n\n"
        "## 价格\n\n月光扫地机器人售价 1299 元。\n",
        encoding="utf-8",
    )
    with EmbeddedKB(tmp_path / "kb.sqlite", "t") as kb:
        kb.add_path(docs, root=tmp_path).raise_on_problems()
        reranker = LexicalReranker()

        async def evidence(question: str) -> list[str]:
            ranked = await reranker.rerank(question, await kb.search(question, 8), kb)
            return [p["title"] for p in select_evidence(ranked, 4, 0.5, 0.8)]

        assert await evidence("星尘打印机保修多久？") == ["星尘打印机 › 保修"]
        assert await evidence("月光扫地机器人售价多少？") == ["月光扫地机器人 › 价格"]
        # Shares 打印机 with the base, but not the subject: before the gate weighed terms,
        # coverage fractions let such questions through with unrelated citations.
        assert await evidence("激光打印机的墨盒怎么换？") == []
        assert await evidence("火星上的首都是哪里？") == []


async def test_embedding_reranker_makes_one_batched_call(ollama: FakeOllama) -> None:
    reranker = EmbeddingReranker(OllamaEmbedder(ollama.url, EMBED_MODEL, batch_size=64))
    ranked = await reranker.rerank(QUERY, PASSAGES)
    calls = ollama.calls("/api/embed")
    assert [call["input"] for call in calls] == [
        [QUERY, *(f"{p['title']}\n{p['text']}" for p in PASSAGES)]
    ]
    check_ranked(ranked, PASSAGES)
    assert ids(ranked)[0] == "refund"
    query = np.array(embed_text(QUERY))
    for p in ranked:
        cosine = float(query @ embed_text(f"{p['title']}\n{p['text']}"))
        assert p["score"] == pytest.approx(min(max(cosine, 0.0), 1.0), abs=1e-4)
    assert await reranker.rerank(QUERY, []) == []
    assert len(ollama.calls("/api/embed")) == 1


async def test_qwen3_request_shape_and_scores(ollama: FakeOllama) -> None:
    reranker = Qwen3Reranker(ollama.url, RERANK_MODEL)
    ranked = await reranker.rerank(QUERY, PASSAGES)
    check_ranked(ranked, PASSAGES)
    assert ids(ranked)[0] == "refund"
    assert ranked[0]["score"] > 0.3 > ranked[-1]["score"]
    calls = ollama.calls("/api/generate")
    assert len(calls) == len(PASSAGES)
    refund = PASSAGES[1]
    document = f"{refund['title']}\n{refund['text']}"
    prompt = (
        QWEN3_RERANK_PREFIX
        + f"<Instruct>: {QWEN3_DEFAULT_INSTRUCTION}\n<Query>: {QUERY}\n<Document>: {document}"
        + QWEN3_RERANK_SUFFIX
    )
    assert {
        "model": RERANK_MODEL,
        "prompt": prompt,
        "raw": True,
        "stream": False,
        "options": {"num_predict": 1, "temperature": 0},
        "logprobs": True,
        "top_logprobs": 5,
    } in calls
    for p in ranked:
        # The fake's P(yes) is the query's bigram overlap with the document, kept off 0 and 1.
        p_yes = min(max(overlap(QUERY, f"{p['title']}\n{p['text']}"), 0.001), 0.999)
        assert p["score"] == round(p_yes, 4)


def test_qwen3_prompt_truncates_long_documents() -> None:
    prompt = qwen3_rerank_prompt("判断相关性", "问题" * 400, "长" * 10_000)
    assert prompt.startswith(QWEN3_RERANK_PREFIX)
    assert prompt.endswith("长" * 10 + QWEN3_RERANK_SUFFIX)
    assert prompt.count("长") == MAX_RERANK_DOCUMENT_CHARS
    assert prompt.count("问题") == 250


async def test_qwen3_concurrency_is_bounded(ollama: FakeOllama) -> None:
    # Only bounds that a busy machine cannot break: delays make arrivals later, never earlier.
    delay = 0.3
    ollama.latency = LatencyModel(fixed_s=delay)
    many = [passage(f"p{i}", "退款", f"第{i}段：购买后可以退款。", 1.0) for i in range(5)]
    ranked = await Qwen3Reranker(ollama.url, RERANK_MODEL, concurrency=2).rerank(QUERY, many)
    check_ranked(ranked, many)
    arrivals = sorted(r["at"] for r in ollama.requests if r["path"] == "/api/generate")
    assert len(arrivals) == 5
    # Each request takes at least `delay`, so with at most two in flight the third request
    # cannot arrive before the first finished: arrivals two apart are `delay` apart.
    assert all(
        later - earlier >= delay * 0.9
        for earlier, later in zip(arrivals, arrivals[2:], strict=False)
    )
    assert arrivals[1] - arrivals[0] < delay  # and two did run at once


@pytest.mark.parametrize("fault", [Fault.HTTP_500, Fault.MODEL_NOT_FOUND, Fault.STREAM_CUT])
async def test_qwen3_failure_falls_back_to_lexical(
    ollama: FakeOllama, fault: Fault, caplog: pytest.LogCaptureFixture
) -> None:
    ollama.fail_next(fault)
    with caplog.at_level(logging.WARNING, logger="tools.rerank"):
        ranked = await Qwen3Reranker(ollama.url, RERANK_MODEL).rerank(QUERY, PASSAGES)
    assert ranked == await LexicalReranker().rerank(QUERY, PASSAGES)
    assert "qwen3-reranker" in caplog.text
    assert "using lexical order" in caplog.text
    if fault is Fault.MODEL_NOT_FOUND:
        assert f"先运行 ollama pull {RERANK_MODEL}" in caplog.text


async def test_qwen3_unreachable_falls_back(caplog: pytest.LogCaptureFixture) -> None:
    reranker = Qwen3Reranker("http://127.0.0.1:9", RERANK_MODEL, timeout=2.0)
    with caplog.at_level(logging.WARNING, logger="tools.rerank"):
        ranked = await reranker.rerank(QUERY, PASSAGES)
    assert ranked == await LexicalReranker().rerank(QUERY, PASSAGES)
    assert "Failed to connect to Ollama" in caplog.text


async def test_embedding_reranker_failure_falls_back_to_lexical(
    ollama: FakeOllama, caplog: pytest.LogCaptureFixture
) -> None:
    ollama.fail_next(Fault.HTTP_500)
    reranker = EmbeddingReranker(OllamaEmbedder(ollama.url, EMBED_MODEL))
    with caplog.at_level(logging.WARNING, logger="tools.rerank"):
        ranked = await reranker.rerank(QUERY, PASSAGES)
    assert ranked == await LexicalReranker().rerank(QUERY, PASSAGES)
    assert "embedding reranker failed, using lexical order" in caplog.text


def test_qwen3_reranker_works_across_event_loops(ollama: FakeOllama) -> None:
    reranker = Qwen3Reranker(ollama.url, RERANK_MODEL)
    first = asyncio.run(reranker.rerank(QUERY, PASSAGES))
    assert asyncio.run(reranker.rerank(QUERY, PASSAGES)) == first


def response(*top: tuple[str, float], chosen: str = "yes") -> GenerateResponse:
    """A generate answer whose first token is `chosen`, with `top` as its top logprobs."""
    entries = [{"token": t, "logprob": math.log(p)} for t, p in top]
    first = {"token": chosen, "logprob": math.log(top[0][1]) if top else 0.0}
    return GenerateResponse.model_validate(
        {"response": chosen, "logprobs": [{**first, "top_logprobs": entries}]}
    )


def test_yes_probability() -> None:
    assert yes_probability(response(("yes", 0.6), ("no", 0.2))) == pytest.approx(0.75)
    assert yes_probability(response(("no", 0.9), ("yes", 0.1), chosen="no")) == pytest.approx(0.1)
    assert yes_probability(response(("yes", 0.9), ("maybe", 0.1))) == 1.0
    assert yes_probability(response(("no", 0.9), ("maybe", 0.1), chosen="no")) == 0.0
    assert yes_probability(response(("Maybe", 0.9), chosen="Maybe")) == 0.0
    assert yes_probability(response(("Yes", 0.3), (" no", 0.1), chosen="Yes")) == pytest.approx(
        0.75
    )
    # Without top logprobs the chosen token alone decides.
    assert yes_probability(response(chosen="yes")) == 1.0
    with pytest.raises(RerankError, match=r"0\.12\.11"):
        yes_probability(GenerateResponse(response="yes"))


async def test_every_strategy_scores_zero_to_one(ollama: FakeOllama) -> None:
    rerankers: list[Reranker] = [
        LexicalReranker(),
        NoReranker(),
        EmbeddingReranker(OllamaEmbedder(ollama.url, EMBED_MODEL)),
        Qwen3Reranker(ollama.url, RERANK_MODEL),
    ]
    assert [r.name for r in rerankers] == ["lexical", "none", "embedding", "qwen3-reranker"]
    for reranker in rerankers:
        name = reranker.name
        # lexical and none keep the retrieval order; the model-based ones sort by score.
        ordered = name not in ("lexical", "none")
        check_ranked(await reranker.rerank(QUERY, PASSAGES), PASSAGES, by_score=ordered)
        assert await reranker.rerank(QUERY, []) == []


def test_qwen3_concurrency_must_be_positive() -> None:
    with pytest.raises(ValueError, match="concurrency"):
        Qwen3Reranker("http://127.0.0.1:9", RERANK_MODEL, concurrency=0)
