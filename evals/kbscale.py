"""How the embedded knowledge base grows (`python -m evals.kbscale --sizes 10000 100000`).

The 1104 CMRC 2018 paragraphs (`data/cmrc2018/kb.jsonl`) plus distractor passages made by
recombining CMRC sentences with a seeded RNG, written to a temporary folder (never committed):
each distractor takes the sentence count and the title of a random CMRC paragraph and that many
random CMRC sentences, so it reads like the gold passages and competes with them on every
word. One database grows from size to size; at each size: the ingest rate of the passages just
added (lexical, no embeddings), the database's size on disk, lexical search latency p50/p95
over the 509 public questions and recall@5 of their gold paragraph.

`--ann-sizes` compares approximate nearest-neighbour libraries on the same synthetic vectors
(see `ann_vectors`): build time, query p50, recall@10 against exact search, resident memory.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import resource
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import track
from rich.table import Table

from evals import publish
from evals.retrieval import DATA_DIR, gold_rank, latency_ms, load_questions, rank_metrics
from tools.kb import GRAPH_CANDIDATES, HYBRID_DEPTH, EmbeddedKB
from tools.text import split_sentences

KB_NAME = "kbscale"
SEED = 17
FILE_PASSAGES = 50_000
"""Distractors per JSONL file: each file is one transaction, and one tokenizing process pool."""
ANN_QUERIES = 200
ANN_K = 10
ANN_LIBRARIES = ("numpy", "hnswlib", "usearch-f16", "usearch-i8", "usearch-i8-rerank", "faiss-sq8")


def distractors(rows: Sequence[Mapping[str, str]], count: int, start: int) -> Iterator[dict]:
    """`count` synthetic passages numbered from `start`, the same for the same numbers."""
    sentences = [s for row in rows for s in split_sentences(row["text"]) if s.strip()]
    shapes = [(row["title"], max(1, len(split_sentences(row["text"])))) for row in rows]
    for number in range(start, start + count):
        rng = random.Random(SEED * 1_000_003 + number)
        title, length = rng.choice(shapes)
        text = "".join(rng.choice(sentences) for _ in range(length))
        yield {"id": f"SYN_{number}", "title": title, "text": text}


def write_distractors(
    folder: Path, rows: Sequence[Mapping[str, str]], count: int, start: int
) -> None:
    for offset in range(0, count, FILE_PASSAGES):
        size = min(FILE_PASSAGES, count - offset)
        with (folder / f"synthetic_{start + offset:07d}.jsonl").open("w", encoding="utf-8") as out:
            for passage in distractors(rows, size, start + offset):
                out.write(json.dumps(passage, ensure_ascii=False) + "\n")


def disk_bytes(db_path: Path) -> int:
    """The database with its WAL folded in: what a copy of the base weighs."""
    with sqlite3.connect(db_path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return sum(p.stat().st_size for p in db_path.parent.glob(db_path.name + "*"))


def run_lexical(sizes: Sequence[int], *, progress: bool = False) -> list[dict[str, Any]]:
    """One row per size (see the module docstring); sizes below the CMRC base are raised to it."""
    rows = [json.loads(line) for line in (DATA_DIR / "kb.jsonl").open(encoding="utf-8")]
    questions = load_questions()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        db_path = Path(tmp) / "kb.sqlite"
        made = 0
        with EmbeddedKB(db_path, KB_NAME) as kb:
            for size in sorted(set(sizes)):
                batch = Path(tmp) / f"batch_{size}"
                batch.mkdir()
                if made == 0:
                    (batch / "cmrc2018.jsonl").write_bytes((DATA_DIR / "kb.jsonl").read_bytes())
                    made = len(rows)
                wanted = max(size - made, 0)
                write_distractors(batch, rows, wanted, made)
                made += wanted
                report = kb.add_path(batch, progress=progress)
                report.raise_on_problems()
                kb.search_sync(questions[0].text, 5)  # warms the page cache and jieba
                seconds, ranks = [], []
                for question in track(
                    questions,
                    f"检索 {kb.count()} 段",
                    console=Console(stderr=True),
                    disable=not progress,
                ):
                    started = time.perf_counter()
                    hits = kb.search_sync(question.text, 5)
                    seconds.append(time.perf_counter() - started)
                    ranks.append(gold_rank(hits, question.gold))
                results.append(
                    {
                        "passages": kb.count(),
                        "added": report.passages_added,
                        "ingest_per_s": round(report.passages_added / max(report.seconds, 1e-9)),
                        "disk_mib": round(disk_bytes(db_path) / 2**20, 1),
                        "latency_ms": latency_ms(seconds),
                        "recall@5": rank_metrics(ranks)["recall@5"],
                    }
                )
    return results


def ann_vectors(n: int, dim: int, queries: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors in clusters, and queries that are noisy copies of random base vectors.

    Uniform random vectors in 1024 dimensions have no near neighbours at all, which is the
    worst case of every graph index and unlike any embedding model; clustered ones with a
    planted nearest neighbour per query behave like real passage embeddings. Built in
    slices, in float32, seeded.
    """
    rng = np.random.default_rng(SEED)
    centres = rng.standard_normal((max(n // 1000, 16), dim), dtype=np.float32)
    base = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 50_000):
        stop = min(start + 50_000, n)
        rows = centres[rng.integers(0, len(centres), stop - start)]
        base[start:stop] = rows + 0.8 * rng.standard_normal((stop - start, dim), dtype=np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    picked = base[rng.integers(0, n, queries)]
    noisy = picked + (0.2 / dim**0.5) * rng.standard_normal(picked.shape, dtype=np.float32)
    return base, (noisy / np.linalg.norm(noisy, axis=1, keepdims=True)).astype(np.float32)


def exact_top(base: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    scores = queries @ base.T
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.take_along_axis(scores, top, axis=1).argsort(axis=1)[:, ::-1]
    return np.take_along_axis(top, order, axis=1)


def rss_mib() -> float:
    """Resident memory now, from /proc (Linux): what a worker pays for the index."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def _builders(dim: int) -> dict[str, Callable[[np.ndarray], Callable[[np.ndarray], np.ndarray]]]:
    """Per library: build an index from the base, return a k-nearest search over it."""

    def numpy_exact(base: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        return lambda q: exact_top(base, q[None, :], ANN_K)[0]

    def hnsw(base: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        import hnswlib

        index = hnswlib.Index(space="ip", dim=dim)
        index.init_index(max_elements=len(base), M=16, ef_construction=100, random_seed=SEED)
        index.add_items(base, num_threads=os.cpu_count() or 1)
        index.set_ef(64)
        return lambda q: index.knn_query(q, k=ANN_K, num_threads=1)[0][0]

    def usearch_rerank(base: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        # What EmbeddedKB does: the int8 graph proposes GRAPH_CANDIDATES x HYBRID_DEPTH passages,
        # their float32 vectors re-rank them.
        graph = usearch(base, "i8")
        wanted = GRAPH_CANDIDATES * HYBRID_DEPTH

        def search(q: np.ndarray) -> np.ndarray:
            keys = graph(q, wanted)
            return keys[np.argsort(-(base[keys] @ q), kind="stable")[:ANN_K]]

        return search

    def usearch(base: np.ndarray, dtype: str) -> Callable[..., np.ndarray]:
        from usearch.index import Index

        index = Index(
            ndim=dim,
            metric="ip",
            dtype=dtype,
            connectivity=16,
            expansion_add=100,
            expansion_search=64,
        )
        index.add(np.arange(len(base)), base, threads=os.cpu_count() or 1)
        return lambda q, k=ANN_K: index.search(q, k, threads=1).keys

    def faiss_hnsw(base: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        import faiss

        int8 = faiss.ScalarQuantizer.QT_8bit
        # The stubs type the quantiser argument as the class; SWIG takes the enum value.
        index = faiss.IndexHNSWSQ(dim, int8, 16, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 100
        index.train(base[:10_000])
        index.add(base)
        index.hnsw.efSearch = 64
        return lambda q: index.search(q[None, :], ANN_K)[1][0]

    return {
        "numpy": numpy_exact,
        "hnswlib": hnsw,
        "usearch-f16": lambda base: usearch(base, "f16"),
        "usearch-i8": lambda base: usearch(base, "i8"),
        "usearch-i8-rerank": usearch_rerank,
        "faiss-sq8": faiss_hnsw,
    }


def run_ann(
    sizes: Sequence[int], dim: int, libraries: Sequence[str], *, progress: bool = False
) -> list[dict[str, Any]]:
    """One row per (size, library), each library built in a fresh slot of this process; the
    memory column is the growth of resident memory over the base vectors, measured after the
    build with the base still held (so it counts the index alone)."""
    builders = _builders(dim)
    results = []
    for size in sorted(set(sizes)):
        base, queries = ann_vectors(size, dim, ANN_QUERIES)
        truth = exact_top(base, queries, ANN_K)
        for name in libraries:
            gc.collect()
            before = rss_mib()
            started = time.perf_counter()
            search = builders[name](base)
            built = time.perf_counter() - started
            grown = rss_mib() - before
            search(queries[0])
            seconds, found = [], []
            for query in track(
                queries, f"{name} {size}×{dim}", console=Console(stderr=True), disable=not progress
            ):
                began = time.perf_counter()
                found.append(search(query))
                seconds.append(time.perf_counter() - began)
            recall = np.mean(
                [
                    len(set(map(int, f)) & set(map(int, t))) / ANN_K
                    for f, t in zip(found, truth, strict=True)
                ]
            )
            results.append(
                {
                    "library": name,
                    "vectors": size,
                    "dim": dim,
                    "build_s": round(built, 1),
                    "query_ms": latency_ms(seconds),
                    "recall@10": round(float(recall), 4),
                    "index_mib": round(grown),
                }
            )
            del search
    return results


def print_report(report: Mapping[str, Any], console: Console) -> None:
    if report["lexical"]:
        table = Table(title=f"嵌入式知识库规模（纯关键词，{report['cpus']} 核）")
        for column in (
            "段落数",
            "本轮导入（段/秒）",
            "磁盘 MiB",
            "检索 p50 ms",
            "检索 p95 ms",
            "recall@5",
        ):
            table.add_column(column, justify="right")
        for row in report["lexical"]:
            table.add_row(
                str(row["passages"]),
                str(row["ingest_per_s"]),
                str(row["disk_mib"]),
                str(row["latency_ms"]["p50"]),
                str(row["latency_ms"]["p95"]),
                str(row["recall@5"]),
            )
        console.print(table)
    if report["ann"]:
        table = Table(title=f"近似最近邻库对比（{ANN_QUERIES} 个查询，top-{ANN_K}）")
        for column in ("库", "向量×维", "构建 s", "p50 ms", "p95 ms", "recall@10", "内存 MiB"):
            table.add_column(column, justify="right", no_wrap=True)
        for row in report["ann"]:
            table.add_row(
                row["library"],
                f"{row['vectors']}×{row['dim']}",
                str(row["build_s"]),
                str(row["query_ms"]["p50"]),
                str(row["query_ms"]["p95"]),
                str(row["recall@10"]),
                str(row["index_mib"]),
            )
        console.print(table)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m evals.kbscale", description="知识库规模实测：导入、磁盘、检索延迟与召回"
    )
    parser.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000], help="段落数")
    parser.add_argument(
        "--ann-sizes", type=int, nargs="*", default=[], help="向量数（近似最近邻对比）"
    )
    parser.add_argument("--dim", type=int, default=1024, help="向量维度")
    parser.add_argument(
        "--libraries",
        nargs="*",
        default=list(ANN_LIBRARIES),
        choices=ANN_LIBRARIES,
        help="参与对比的库",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="把报告写成 JSON")
    args = parser.parse_args(argv)
    if any(size < 1 for size in [*args.sizes, *args.ann_sizes]):
        parser.error("规模至少为 1")
    report: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "lexical": run_lexical(args.sizes, progress=True) if args.sizes else [],
        "ann": run_ann(args.ann_sizes, args.dim, args.libraries, progress=True),
    }
    publish(report, print_report, args.json)
    return report


if __name__ == "__main__":
    main()
