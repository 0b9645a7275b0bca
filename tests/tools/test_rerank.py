"""Rerankers against the fake Ollama: request shapes, 0..1 scores, concurrency and fallbacks."""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
from collections.abc import Iterator

import numpy as np
import pytest
from ollama import GenerateResponse

from evals.fakes.ollama import FakeOllama, Fault, LatencyModel, embed_text, overlap
from tools.base import Passage
from tools.embeddings import OllamaEmbedder
from tools.rerank import (
    MAX_RERANK_DOCUMENT_CHARS,
    QWEN3_DEFAULT_INSTRUCTION,
    QWEN3_RERANK_PREFIX,
    QWEN3_RERANK_SUFFIX,
    EmbeddingReranker,
    LexicalReranker,
    NoReranker,
    Qwen3Reranker,
    Reranker,
    RerankError,
    qwen3_rerank_prompt,
    select_evidence,
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
        ("refund", 0.8),
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
    delay = 0.05
    ollama.latency = LatencyModel(fixed_s=delay)
    many = [passage(f"p{i}", "退款", f"第{i}段：购买后可以退款。", 1.0) for i in range(7)]
    started = asyncio.get_running_loop().time()
    ranked = await Qwen3Reranker(ollama.url, RERANK_MODEL, concurrency=2).rerank(QUERY, many)
    elapsed = asyncio.get_running_loop().time() - started
    check_ranked(ranked, many)
    arrivals = sorted(r["at"] for r in ollama.requests if r["path"] == "/api/generate")
    assert len(arrivals) == 7
    # Each request takes at least `delay`, so with at most two in flight the third request
    # cannot arrive before the first finished: arrivals two apart are `delay` apart.
    assert all(
        later - earlier >= delay * 0.9
        for earlier, later in zip(arrivals, arrivals[2:], strict=False)
    )
    assert arrivals[1] - arrivals[0] < delay  # and two did run at once
    assert elapsed < 7 * delay


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
