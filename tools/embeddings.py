"""Text embeddings from Ollama's `/api/embed`, as L2-normalised float32 rows.

The knowledge base embeds passages with `embed_sync` (it runs in worker threads); rerankers
embed with `embed` on the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Generic, Protocol, TypeVar

import httpx
import numpy as np
import ollama

T = TypeVar("T")

OLLAMA_ERRORS: tuple[type[BaseException], ...] = (
    ConnectionError,
    TimeoutError,
    httpx.HTTPError,
    ollama.ResponseError,
    ollama.RequestError,
    ValueError,
)
"""What an Ollama call raises when the server is down, slow, lacks the model or answers
nonsense (a malformed body fails JSON or pydantic parsing, both `ValueError`s)."""


class EmbeddingError(RuntimeError):
    """Embedding failed; the message says why in words an operator can act on."""


class Embedder(Protocol):
    """Turns texts into L2-normalised float32 rows, one per text, in order."""

    model: str
    """Name of the embedding model; stored vectors are keyed by it."""
    batch_size: int
    """Texts per request; callers that commit as they go use it as their unit of work."""

    def embed_sync(self, texts: Sequence[str]) -> np.ndarray: ...

    async def embed(self, texts: Sequence[str]) -> np.ndarray: ...


def normalise_rows(vectors: np.ndarray) -> np.ndarray:
    """`vectors` as float32 with unit-length rows; all-zero rows stay zero."""
    matrix = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms > 0, norms, 1.0)


class LoopLocal(Generic[T]):
    """One value per event loop, made by `factory` on first use in each loop.

    An httpx connection pool or an asyncio semaphore belongs to the loop that first used it;
    a caller that runs `asyncio.run` more than once (a CLI, a test session) gets fresh ones.
    """

    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        self._current: tuple[asyncio.AbstractEventLoop, T] | None = None

    def get(self) -> T:
        loop = asyncio.get_running_loop()
        if self._current is None or self._current[0] is not loop:
            self._current = (loop, self._factory())
        return self._current[1]


class OllamaEmbedder:
    """`POST /api/embed` in batches of `batch_size` texts."""

    def __init__(
        self, url: str, model: str, *, batch_size: int = 32, timeout: float = 60.0
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.url = url
        self.model = model
        self.batch_size = batch_size
        self._client = ollama.Client(host=url, timeout=timeout)
        self._async = LoopLocal(lambda: ollama.AsyncClient(host=url, timeout=timeout))

    def embed_sync(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors for `texts`; raises `EmbeddingError`."""
        rows: list[Sequence[float]] = []
        for batch in _batches(texts, self.batch_size):
            try:
                response = self._client.embed(model=self.model, input=batch)
            except OLLAMA_ERRORS as exc:
                raise self._error(exc) from exc
            rows.extend(self._checked(response.embeddings, len(batch)))
        return self._matrix(rows)

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors for `texts`, without blocking the event loop; raises `EmbeddingError`."""
        client = self._async.get()
        rows: list[Sequence[float]] = []
        for batch in _batches(texts, self.batch_size):
            try:
                response = await client.embed(model=self.model, input=batch)
            except OLLAMA_ERRORS as exc:
                raise self._error(exc) from exc
            rows.extend(self._checked(response.embeddings, len(batch)))
        return self._matrix(rows)

    def _checked(
        self, embeddings: Sequence[Sequence[float]], expected: int
    ) -> Sequence[Sequence[float]]:
        if len(embeddings) != expected:
            raise EmbeddingError(
                f"嵌入模型 {self.model} 返回了 {len(embeddings)} 个向量，应为 {expected} 个"
            )
        return embeddings

    def _matrix(self, rows: list[Sequence[float]]) -> np.ndarray:
        if not rows:
            return np.zeros((0, 0), dtype=np.float32)
        try:
            return normalise_rows(np.array(rows, dtype=np.float32))
        except ValueError:
            raise EmbeddingError(f"嵌入模型 {self.model} 返回的向量维度不一致") from None

    def _error(self, exc: BaseException) -> EmbeddingError:
        if isinstance(exc, ollama.ResponseError) and exc.status_code == 404:
            return EmbeddingError(
                f"Ollama（{self.url}）上没有嵌入模型 {self.model}：先运行 ollama pull {self.model}"
            )
        if isinstance(exc, ConnectionError | httpx.ConnectError):
            return EmbeddingError(f"连不上 Ollama（{self.url}）：确认 ollama serve 正在运行")
        if isinstance(exc, TimeoutError | httpx.TimeoutException):
            return EmbeddingError(f"Ollama（{self.url}）生成向量超时（模型 {self.model}）")
        return EmbeddingError(f"Ollama（{self.url}）生成向量失败（模型 {self.model}）：{exc}")


def passage_text(title: str, text: str) -> str:
    """What is embedded for a passage: its title line, then its text."""
    return f"{title}\n{text}" if title else text


def _batches(texts: Sequence[str], size: int) -> list[list[str]]:
    return [list(texts[start : start + size]) for start in range(0, len(texts), size)]
