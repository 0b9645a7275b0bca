"""Retrieval benchmark on CMRC 2018 (`python -m evals.retrieval`).

Ingests `data/cmrc2018/kb.jsonl` (1104 Wikipedia paragraphs) into a fresh temporary
`EmbeddedKB` and searches it with the 509 public questions: recall@1, recall@5, MRR@10, search
latency and ingestion speed, optionally the same after a reranker, and optionally a two-turn
variant that measures how well the classify node's rewrite restores a follow-up's subject.

Ollama (embeddings, rerankers, the classify model) is `--ollama-url`, or else an in-process
fake (`evals.fakes.ollama.FakeOllama`) whose vectors are hashed character bigrams and whose
"model" is rule-based: with it, every model-dependent figure checks the plumbing, not quality.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.runtime import Runtime
from rich.console import Console
from rich.table import Table

from agent.context import Context
from agent.models import OllamaChatModels
from agent.nodes.classify import classify
from agent.services import Services, set_services
from agent.settings import Settings
from agent.state import State
from evals import publish
from evals.fakes.ollama import FakeOllama
from tools.base import Passage, TermStatistics
from tools.embeddings import OllamaEmbedder
from tools.kb import EmbeddedKB
from tools.rerank import (
    EmbeddingReranker,
    LexicalReranker,
    NoReranker,
    Qwen3Reranker,
    Reranker,
)

DATA_DIR = Path(__file__).parent / "data" / "cmrc2018"
KB_NAME = "cmrc2018"
SEARCH_DEPTH = 20
"""Passages fetched per question: MRR@10 needs 10, reranking takes all of them."""
RERANKERS = ("lexical", "embedding", "qwen3-reranker", "none")
DEFAULT_CHAT_MODEL = "qwen3:8b"
DEFAULT_RERANK_MODEL = "dengcao/Qwen3-Reranker-0.6B:Q8_0"
FAKE_NOTE = (
    "Ollama 为进程内假服务（evals.fakes.ollama）：向量是字符二元组哈希，改写由规则代替 Qwen3，"
    "依赖模型的数字只检验管线，不代表真实模型的效果。"
)

# A subject named by a category noun reads naturally as 该+noun ("该铁路位于哪里？"); anything
# else becomes 它. Longer suffixes first, so that 车站 is matched before 站.
_CATEGORY_REFERENCES = (
    ("铁路", "该铁路"),
    ("车站", "该车站"),
    ("站", "该站"),
    ("大学", "该校"),
    ("学院", "该校"),
    ("中学", "该校"),
    ("公司", "该公司"),
    ("频道", "该频道"),
    ("机场", "该机场"),
    ("教堂", "该教堂"),
    ("公园", "该公园"),
    ("博物馆", "该馆"),
    ("医院", "该医院"),
    ("战役", "该战役"),
    ("条约", "该条约"),
    ("桥", "该桥"),
    ("寺", "该寺"),
)


@dataclass(frozen=True)
class Question:
    id: str
    text: str
    gold: frozenset[str]
    title: str
    """Title of the (first) gold paragraph."""


@dataclass(frozen=True)
class FollowUp:
    """A question turned into turn 2 of a conversation whose turn 1 names the subject."""

    question: Question
    turn1: str
    turn2: str
    oracle: str
    """Turn 2 with the reference replaced back by the title: the upper bound of a rewrite."""


def load_questions(data_dir: Path = DATA_DIR, limit: int | None = None) -> list[Question]:
    """The public questions, in file order, each with its gold paragraph's title."""
    titles: dict[str, str] = {}
    with (data_dir / "kb.jsonl").open(encoding="utf-8") as lines:
        for line in lines:
            row = json.loads(line)
            titles[row["id"]] = row["title"]
    questions = []
    with (data_dir / "questions_public.jsonl").open(encoding="utf-8") as lines:
        for line in lines:
            row = json.loads(line)
            gold = row["gold_passage_ids"]
            questions.append(Question(row["id"], row["question"], frozenset(gold), titles[gold[0]]))
    return questions[:limit] if limit is not None else questions


def gold_rank(passages: Sequence[Passage], gold: frozenset[str]) -> int | None:
    """1-based rank of the first gold passage; a split passage (`id#2`) counts as its paragraph."""
    for rank, passage in enumerate(passages, start=1):
        if passage["id"].split("#", 1)[0] in gold:
            return rank
    return None


def rank_metrics(ranks: Sequence[int | None]) -> dict[str, float]:
    """recall@1, recall@5 and MRR@10 over the gold ranks of a question set."""
    if not ranks:
        return {"recall@1": 0.0, "recall@5": 0.0, "mrr@10": 0.0}

    def share(hit: list[bool]) -> float:
        return round(sum(hit) / len(ranks), 4)

    return {
        "recall@1": share([r is not None and r <= 1 for r in ranks]),
        "recall@5": share([r is not None and r <= 5 for r in ranks]),
        "mrr@10": round(sum(1 / r for r in ranks if r is not None and r <= 10) / len(ranks), 4),
    }


def latency_ms(seconds: Sequence[float]) -> dict[str, float]:
    values = np.array(seconds, dtype=float) * 1000 if seconds else np.zeros(1)
    return {
        "p50": round(float(np.percentile(values, 50)), 2),
        "p95": round(float(np.percentile(values, 95)), 2),
    }


def follow_up(question: Question) -> FollowUp | None:
    """The two-turn form of a question that names its paragraph's title, else None."""
    title = question.title
    if not title or title not in question.text:
        return None
    reference = next(
        (ref for suffix, ref in _CATEGORY_REFERENCES if title.endswith(suffix) and title != suffix),
        "它",
    )

    def substitute(replacement: str) -> str:
        return question.text.replace(f"《{title}》", replacement).replace(title, replacement)

    return FollowUp(question, f"我想了解一下{title}。", substitute(reference), substitute(title))


async def rewrite_follow_ups(
    cases: Sequence[FollowUp],
    kb: EmbeddedKB,
    *,
    ollama_url: str,
    chat_model: str,
    rewrite: Literal["model", "history"],
) -> tuple[list[str], int]:
    """Each case's turn 2 as the classify node turns it into a search query (`rewrite`: by the
    classify model, or the earlier questions carried along); also how many rewrites degraded.

    The node runs as in a graph turn: its services hold a real `ChatOllama` factory and its
    state holds turn 1, a short acknowledgement and turn 2.
    """
    settings = Settings(ollama_url=ollama_url, chat_model=chat_model)
    context = Context(
        classify_model=chat_model,
        history_turns=4,
        prompt_variant="default",
        classify_always=False,
        rewrite=rewrite,
    )
    runtime = Runtime(context=context)
    set_services(Services(settings=settings, knowledge=kb, chat_models=OllamaChatModels(settings)))
    rewrites, degraded = [], 0
    try:
        for case in cases:
            title = case.question.title
            state = State(
                messages=[
                    HumanMessage(content=case.turn1),
                    AIMessage(content=f"好的，你想了解{title}的哪方面？"),
                    HumanMessage(content=case.turn2),
                ]
            )
            update = await classify(state, runtime)
            rewrites.append(str(update["query"]))
            degraded += bool(update.get("degraded"))
    finally:
        set_services(None)
    return rewrites, degraded


async def _rerank_all(
    reranker: Reranker,
    questions: Sequence[Question],
    hits: Sequence[list[Passage]],
    stats: TermStatistics,
) -> tuple[list[int | None], list[float]]:
    ranks, seconds = [], []
    for question, passages in zip(questions, hits, strict=True):
        started = time.perf_counter()
        # With the base's statistics, as the service reranks: the latency measured is its own.
        ranked = await reranker.rerank(question.text, passages, stats)
        seconds.append(time.perf_counter() - started)
        ranks.append(gold_rank(ranked, question.gold))
    return ranks, seconds


def _reranker(
    name: str, *, embedder: OllamaEmbedder | None, ollama_url: str, rerank_model: str
) -> Reranker:
    if name == "embedding":
        if embedder is None:
            raise ValueError("--reranker embedding 需要 --embed-model")
        return EmbeddingReranker(embedder)
    if name == "qwen3-reranker":
        return Qwen3Reranker(ollama_url, rerank_model)
    if name == "lexical":
        return LexicalReranker()
    if name == "none":
        return NoReranker()
    raise ValueError(f"unknown reranker {name!r}; known: {', '.join(RERANKERS)}")


def run_benchmark(
    *,
    embed_model: str | None = None,
    ollama_url: str | None = None,
    limit: int | None = None,
    reranker: str | None = None,
    rerank_model: str = DEFAULT_RERANK_MODEL,
    multi_turn: bool = False,
    chat_model: str = DEFAULT_CHAT_MODEL,
    data_dir: Path = DATA_DIR,
    progress: bool = False,
) -> dict[str, Any]:
    """Run the benchmark and return its report (see the module docstring).

    Raises `ValueError` for a limit below 1, or a reranker that is unknown or lacks what it
    needs.
    """
    if limit is not None and limit < 1:
        raise ValueError("--limit 至少为 1")
    questions = load_questions(data_dir, limit)
    needs_ollama = bool(embed_model) or reranker in ("embedding", "qwen3-reranker") or multi_turn
    with contextlib.ExitStack() as stack:
        fake = ollama_url is None and needs_ollama
        if fake:
            ollama_url = stack.enter_context(FakeOllama()).url
        url = ollama_url or ""
        embedder = OllamaEmbedder(url, embed_model) if embed_model else None
        strategy = (
            _reranker(reranker, embedder=embedder, ollama_url=url, rerank_model=rerank_model)
            if reranker is not None
            else None
        )
        kb = stack.enter_context(
            EmbeddedKB(
                Path(stack.enter_context(tempfile.TemporaryDirectory())) / "kb.sqlite",
                KB_NAME,
                embedder,
            )
        )
        ingest = kb.add_path(data_dir / "kb.jsonl", progress=progress)
        ingest.raise_on_problems()
        report: dict[str, Any] = {
            "dataset": "cmrc2018",
            "questions": len(questions),
            "passages": kb.count(),
            "retrieval": "hybrid" if embedder else "lexical",
            "embed_model": embed_model,
            "ollama": {"url": url, "fake": fake} if needs_ollama else None,
            "ingest": {
                "seconds": ingest.seconds,
                "passages_per_s": round(ingest.passages_added / max(ingest.seconds, 1e-9), 1),
            },
        }
        kb.search_sync(questions[0].text, SEARCH_DEPTH)  # loads the vector matrix, warms caches
        hits, seconds = [], []
        for question in questions:
            started = time.perf_counter()
            hits.append(kb.search_sync(question.text, SEARCH_DEPTH))
            seconds.append(time.perf_counter() - started)
        ranks = [gold_rank(h, q.gold) for h, q in zip(hits, questions, strict=True)]
        report["search"] = {**rank_metrics(ranks), "latency_ms": latency_ms(seconds)}

        if strategy is not None:
            reranked, rerank_seconds = asyncio.run(_rerank_all(strategy, questions, hits, kb))
            metrics = rank_metrics(reranked)
            report["rerank"] = {
                "reranker": strategy.name,
                "model": rerank_model if strategy.name == "qwen3-reranker" else None,
                "depth": SEARCH_DEPTH,
                "recall@1": metrics["recall@1"],
                "recall@5": metrics["recall@5"],
                "latency_ms": latency_ms(rerank_seconds),
            }

        if multi_turn:
            cases = [case for q in questions if (case := follow_up(q)) is not None]
            rewrites, degraded = asyncio.run(
                rewrite_follow_ups(
                    cases, kb, ollama_url=url, chat_model=chat_model, rewrite="model"
                )
            )
            carried, _ = asyncio.run(
                rewrite_follow_ups(
                    cases, kb, ollama_url=url, chat_model=chat_model, rewrite="history"
                )
            )

            def recall_at_5(texts: Sequence[str]) -> float:
                found = [
                    gold_rank(kb.search_sync(text, 5), case.question.gold)
                    for text, case in zip(texts, cases, strict=True)
                ]
                return rank_metrics(found)["recall@5"]

            report["multi_turn"] = {
                "cases": len(cases),
                "chat_model": chat_model,
                "raw_recall@5": recall_at_5([c.turn2 for c in cases]),
                "rewritten_recall@5": recall_at_5(rewrites),
                "history_recall@5": recall_at_5(carried),
                "oracle_recall@5": recall_at_5([c.oracle for c in cases]),
                "degraded_rewrites": degraded,
                "examples": [
                    {"turn1": c.turn1, "turn2": c.turn2, "rewrite": r, "oracle": c.oracle}
                    for c, r in list(zip(cases, rewrites, strict=True))[:3]
                ],
            }
        report["notes"] = [FAKE_NOTE] if fake else []
    return report


def print_report(report: Mapping[str, Any], console: Console) -> None:
    """The report's figures as a table, then its notes."""
    table = Table(title=f"检索基准 cmrc2018（{report['retrieval']}）")
    table.add_column("指标")
    table.add_column("数值", justify="right")
    search = report["search"]
    rows: list[tuple[str, object]] = [
        ("问题数 / 段落数", f"{report['questions']} / {report['passages']}"),
        ("嵌入模型", report["embed_model"] or "（无，仅关键词）"),
        ("recall@1", search["recall@1"]),
        ("recall@5", search["recall@5"]),
        ("MRR@10", search["mrr@10"]),
        (
            "检索延迟 p50 / p95（ms）",
            f"{search['latency_ms']['p50']} / {search['latency_ms']['p95']}",
        ),
        ("导入速度（段/秒）", report["ingest"]["passages_per_s"]),
    ]
    if rerank := report.get("rerank"):
        name = rerank["reranker"]
        rows += [
            (f"重排 {name}（前 {rerank['depth']}）recall@1", rerank["recall@1"]),
            (f"重排 {name} recall@5", rerank["recall@5"]),
            (
                "重排延迟 p50 / p95（ms）",
                f"{rerank['latency_ms']['p50']} / {rerank['latency_ms']['p95']}",
            ),
        ]
    if multi := report.get("multi_turn"):
        rows += [
            ("多轮用例数", multi["cases"]),
            ("第二轮原文 recall@5", multi["raw_recall@5"]),
            (f"classify 改写后 recall@5（{multi['chat_model']}）", multi["rewritten_recall@5"]),
            ("带上前一问检索 recall@5（QQRAG_REWRITE=history）", multi["history_recall@5"]),
            ("指代还原（上限）recall@5", multi["oracle_recall@5"]),
            ("改写降级次数", multi["degraded_rewrites"]),
        ]
    for label, value in rows:
        table.add_row(label, str(value))
    console.print(table)
    for note in report["notes"]:
        console.print(f"注：{note}")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m evals.retrieval", description="CMRC 2018 检索基准"
    )
    parser.add_argument("--embed-model", help="Ollama 嵌入模型：混合检索（不给则仅关键词检索）")
    parser.add_argument(
        "--ollama-url", help="Ollama 地址（不给则在进程内启动假 Ollama，仅检验管线）"
    )
    parser.add_argument("--limit", type=int, help="只跑前 N 个问题")
    parser.add_argument("--reranker", choices=RERANKERS, help="对前 20 个结果重排后再计分")
    parser.add_argument("--rerank-model", default=DEFAULT_RERANK_MODEL)
    parser.add_argument("--multi-turn", action="store_true", help="两轮对话：指代与改写")
    parser.add_argument("--chat-model", default=DEFAULT_CHAT_MODEL, help="classify 改写用的模型")
    parser.add_argument("--json", type=Path, metavar="PATH", help="把报告写成 JSON")
    args = parser.parse_args(argv)
    try:
        report = run_benchmark(
            embed_model=args.embed_model,
            ollama_url=args.ollama_url,
            limit=args.limit,
            reranker=args.reranker,
            rerank_model=args.rerank_model,
            multi_turn=args.multi_turn,
            chat_model=args.chat_model,
            progress=True,
        )
    except ValueError as exc:
        parser.error(str(exc))
    publish(report, print_report, args.json)
    return report


if __name__ == "__main__":
    main()
