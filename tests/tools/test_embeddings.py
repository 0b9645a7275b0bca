"""OllamaEmbedder against the fake Ollama: batching, normalisation, errors an operator can act on."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import numpy as np
import pytest

from evals.fakes.ollama import EMBEDDING_DIM, FakeOllama, Fault, embed_text
from tools.embeddings import (
    EmbeddingError,
    OllamaEmbedder,
    normalise_rows,
    passage_text,
)

MODEL = "qwen3-embedding:0.6b"
TEXTS = ["退款政策", "订单在付款后四十八小时内发货。", "Python 3.11", "积分", "会员等级"]


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOllama]:
    with FakeOllama() as server:
        yield server


@pytest.fixture
def ollama(fake: FakeOllama) -> FakeOllama:
    fake.reset()
    return fake


def expected(texts: list[str]) -> np.ndarray:
    return np.array([embed_text(text) for text in texts], dtype=np.float32)


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_embed_sync_batches_and_normalises(ollama: FakeOllama) -> None:
    vectors = OllamaEmbedder(ollama.url, MODEL, batch_size=2).embed_sync(TEXTS)
    assert vectors.dtype == np.float32
    assert vectors.shape == (5, EMBEDDING_DIM)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(vectors, expected(TEXTS), atol=1e-6)
    assert [call["input"] for call in ollama.calls("/api/embed")] == [
        TEXTS[0:2],
        TEXTS[2:4],
        TEXTS[4:5],
    ]
    assert {call["model"] for call in ollama.calls("/api/embed")} == {MODEL}


async def test_embed_async_matches_sync(ollama: FakeOllama) -> None:
    embedder = OllamaEmbedder(ollama.url, MODEL, batch_size=32)
    vectors = await embedder.embed(TEXTS)
    np.testing.assert_allclose(vectors, embedder.embed_sync(TEXTS), atol=1e-7)
    assert [len(call["input"]) for call in ollama.calls("/api/embed")] == [5, 5]


def test_async_embed_works_across_event_loops(ollama: FakeOllama) -> None:
    embedder = OllamaEmbedder(ollama.url, MODEL)
    first = asyncio.run(embedder.embed(["退款"]))
    second = asyncio.run(embedder.embed(["退款"]))  # a new loop gets a new connection pool
    np.testing.assert_array_equal(first, second)


def test_no_texts_no_request(ollama: FakeOllama) -> None:
    vectors = OllamaEmbedder(ollama.url, MODEL).embed_sync([])
    assert vectors.shape == (0, 0)
    assert ollama.calls("/api/embed") == []


def test_missing_model_says_how_to_pull_it(ollama: FakeOllama) -> None:
    embedder = OllamaEmbedder(ollama.url, "bge-m3")
    with pytest.raises(EmbeddingError) as error:
        embedder.embed_sync(["退款"])
    assert (
        str(error.value)
        == f"Ollama（{ollama.url}）上没有嵌入模型 bge-m3：先运行 ollama pull bge-m3"
    )


async def test_unreachable_ollama() -> None:
    url = closed_port_url()
    embedder = OllamaEmbedder(url, MODEL)
    message = f"连不上 Ollama（{url}）：确认 ollama serve 正在运行"
    with pytest.raises(EmbeddingError, match=message):
        embedder.embed_sync(["退款"])
    with pytest.raises(EmbeddingError, match=message):
        await embedder.embed(["退款"])


@pytest.mark.parametrize(
    ("fault", "detail"),
    [
        (Fault.HTTP_500, "llama runner process has terminated"),
        (Fault.QUEUE_FULL, "server busy"),
        (Fault.STREAM_ERROR_LINE, "unexpected EOF"),
        (Fault.STREAM_CUT, "生成向量失败"),
    ],
)
def test_server_failures_become_embedding_errors(
    ollama: FakeOllama, fault: Fault, detail: str
) -> None:
    embedder = OllamaEmbedder(ollama.url, MODEL)
    ollama.fail_next(fault)
    with pytest.raises(EmbeddingError, match=detail):
        embedder.embed_sync(["退款"])
    assert embedder.embed_sync(["退款"]).shape == (1, EMBEDDING_DIM)


def test_timeout(ollama: FakeOllama) -> None:
    ollama.fail_next(Fault.SLOW)
    with pytest.raises(EmbeddingError, match="生成向量超时"):
        OllamaEmbedder(ollama.url, MODEL, timeout=0.2).embed_sync(["退款"])


def test_normalise_rows_keeps_zero_rows() -> None:
    rows = normalise_rows(np.array([[3.0, 4.0], [0.0, 0.0]]))
    assert rows.dtype == np.float32
    np.testing.assert_allclose(rows, [[0.6, 0.8], [0.0, 0.0]])


def test_passage_text() -> None:
    assert passage_text("退款政策", "七天内退款。") == "退款政策\n七天内退款。"
    assert passage_text("", "七天内退款。") == "七天内退款。"


def test_batch_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        OllamaEmbedder("http://127.0.0.1:9", MODEL, batch_size=0)
