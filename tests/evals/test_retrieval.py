"""The CMRC 2018 retrieval benchmark on a 60-question sample, with the in-process fake Ollama."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evals.retrieval import (
    DATA_DIR,
    FAKE_NOTE,
    Question,
    follow_up,
    gold_rank,
    load_questions,
    main,
    rank_metrics,
    run_benchmark,
)
from tools.base import Passage

EMBED_MODEL = "qwen3-embedding:0.6b"


def check_recalls(figures: dict[str, float]) -> None:
    for name, value in figures.items():
        if name.startswith(("recall@", "mrr@")):
            assert 0.0 <= value <= 1.0, name


def test_dataset_is_an_unchanged_copy_with_its_licence() -> None:
    assert len((DATA_DIR / "kb.jsonl").read_text(encoding="utf-8").splitlines()) == 1104
    assert len(load_questions()) == 509
    readme = (DATA_DIR / "README.md").read_text(encoding="utf-8")
    assert "CC BY-SA 4.0" in readme
    assert "Cui et al." in readme


def test_lexical_benchmark_with_rerank_and_multi_turn(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "report.json"
    report = main(["--limit", "60", "--reranker", "lexical", "--multi-turn", "--json", str(path)])
    assert json.loads(path.read_text(encoding="utf-8")) == report
    assert (report["dataset"], report["questions"], report["passages"]) == ("cmrc2018", 60, 1104)
    assert (report["retrieval"], report["embed_model"]) == ("lexical", None)
    assert report["ollama"]["fake"] is True  # the multi-turn rewrite needs a chat model
    assert report["notes"] == [FAKE_NOTE]
    assert report["ingest"]["passages_per_s"] > 0

    search = report["search"]
    check_recalls(search)
    assert search["recall@5"] >= 0.9
    assert search["recall@1"] <= search["recall@5"]
    assert 0 < search["latency_ms"]["p50"] <= search["latency_ms"]["p95"]

    rerank = report["rerank"]
    assert (rerank["reranker"], rerank["depth"]) == ("lexical", 20)
    check_recalls(rerank)

    multi = report["multi_turn"]
    assert 0 < multi["cases"] <= 60
    assert multi["degraded_rewrites"] == 0
    for key in ("raw_recall@5", "rewritten_recall@5", "history_recall@5", "oracle_recall@5"):
        assert 0.0 <= multi[key] <= 1.0
    # The fake's rule-based rewrite puts the subject back, so it beats the raw follow-up.
    assert multi["raw_recall@5"] < multi["rewritten_recall@5"] <= multi["oracle_recall@5"]
    assert multi["raw_recall@5"] < multi["history_recall@5"] <= multi["oracle_recall@5"]
    assert multi["examples"][0]["turn1"] == "我想了解一下战国无双3。"
    assert multi["examples"][0]["turn2"] == "它是由哪两个公司合作开发的？"

    out = capsys.readouterr().out
    assert "检索基准 cmrc2018（lexical）" in out
    assert "recall@5" in out
    assert "假服务" in out


def test_hybrid_benchmark_with_embedding_reranker() -> None:
    report = run_benchmark(embed_model=EMBED_MODEL, limit=60, reranker="embedding")
    assert (report["retrieval"], report["embed_model"]) == ("hybrid", EMBED_MODEL)
    assert report["ollama"]["fake"] is True
    check_recalls(report["search"])
    check_recalls(report["rerank"])
    assert report["rerank"]["reranker"] == "embedding"
    assert report["search"]["recall@5"] >= 0.8
    assert "multi_turn" not in report


def test_lexical_only_run_needs_no_ollama() -> None:
    report = run_benchmark(limit=5)
    assert report["ollama"] is None
    assert report["notes"] == []
    assert "rerank" not in report


def test_embedding_reranker_needs_an_embed_model(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--limit", "5", "--reranker", "embedding"])
    assert "--reranker embedding 需要 --embed-model" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown reranker"):
        run_benchmark(limit=5, reranker="bm25")
    with pytest.raises(ValueError, match="--limit 至少为 1"):
        run_benchmark(limit=0)


def question(text: str, title: str) -> Question:
    return Question("Q", text, frozenset({"P"}), title)


def test_follow_up_turns() -> None:
    case = follow_up(question("《战国无双3》是由哪两个公司合作开发的？", "战国无双3"))
    assert case is not None
    assert (case.turn1, case.turn2, case.oracle) == (
        "我想了解一下战国无双3。",
        "它是由哪两个公司合作开发的？",
        "战国无双3是由哪两个公司合作开发的？",
    )
    railway = follow_up(question("大莱龙铁路位于哪里？", "大莱龙铁路"))
    assert railway is not None
    assert railway.turn2 == "该铁路位于哪里？"
    station = follow_up(question("嘉兴南站由哪几个部分组成？", "嘉兴南站"))
    assert station is not None
    assert station.turn2 == "该站由哪几个部分组成？"
    assert follow_up(question("谁设计了该教堂？", "底特律圣公会三一堂")) is None
    assert follow_up(question("谁设计了该教堂？", "")) is None


def test_ranks_and_metrics() -> None:
    def hit(passage_id: str) -> Passage:
        return Passage(id=passage_id, title="", source="", text="", score=0.0, kb="")

    gold = frozenset({"DEV_1"})
    assert gold_rank([hit("DEV_2"), hit("DEV_1#2")], gold) == 2
    assert gold_rank([hit("DEV_2")], gold) is None
    assert rank_metrics([1, 2, None, 11]) == {"recall@1": 0.25, "recall@5": 0.5, "mrr@10": 0.375}
    assert rank_metrics([]) == {"recall@1": 0.0, "recall@5": 0.0, "mrr@10": 0.0}
