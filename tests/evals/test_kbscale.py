"""The knowledge-base scale benchmark on small sizes: deterministic corpora, sane figures."""

from __future__ import annotations

import json

import numpy as np

from evals import kbscale
from evals.retrieval import DATA_DIR
from tools.text import split_sentences


def cmrc_rows() -> list[dict[str, str]]:
    return [json.loads(line) for line in (DATA_DIR / "kb.jsonl").open(encoding="utf-8")]


def test_distractors_are_deterministic_and_made_of_cmrc_sentences() -> None:
    rows = cmrc_rows()
    first = list(kbscale.distractors(rows, 5, 2000))
    assert first == list(kbscale.distractors(rows, 5, 2000))
    # A passage depends on its number only, so growing a base in steps makes the same corpus.
    assert first[2:] == list(kbscale.distractors(rows, 3, 2002))
    assert [p["id"] for p in first] == [f"SYN_{n}" for n in range(2000, 2005)]
    titles = {row["title"] for row in rows}
    text = "".join(row["text"] for row in rows)
    assert all(p["title"] in titles and p["text"] for p in first)
    assert all(sentence in text for p in first for sentence in split_sentences(p["text"]))


def test_lexical_rows_per_size() -> None:
    small, grown = kbscale.run_lexical([1104, 1200])
    assert (small["passages"], grown["passages"]) == (1104, 1200)
    assert grown["added"] == 96
    assert 0 < small["disk_mib"] < grown["disk_mib"]
    assert small["recall@5"] >= 0.99
    assert small["latency_ms"]["p50"] <= small["latency_ms"]["p95"]


def test_ann_comparison_on_planted_neighbours() -> None:
    base, queries = kbscale.ann_vectors(2000, 32, 20)
    assert np.allclose(np.linalg.norm(base, axis=1), 1.0, atol=1e-5)
    truth = kbscale.exact_top(base, queries, 1)
    # Each query is a noisy copy of a base vector, which stays its nearest neighbour.
    assert (base[truth[:, 0]] @ queries.T).diagonal().min() > 0.9
    rows = kbscale.run_ann([2000], 32, ["numpy", "usearch-i8-rerank"])
    by_library = {row["library"]: row for row in rows}
    assert by_library["numpy"]["recall@10"] == 1.0
    assert by_library["usearch-i8-rerank"]["recall@10"] >= 0.9
