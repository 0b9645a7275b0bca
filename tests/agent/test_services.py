"""Production wiring: which backend, which rerankers, which knowledge bases."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.checkpoints import LoopSqliteSaver
from agent.context import Context
from agent.services import ensure_default_knowledge, services_from_settings, set_services
from agent.settings import Settings
from evals.fakes.maxkb import (
    DEFAULT_USER_TOKEN,
    FIXTURE_KNOWLEDGE_ID,
    FakeMaxKB,
)
from evals.fakes.ollama import FakeOllama
from graphs.qa import build
from tests.conftest import FIXTURES, run_turn
from tools.knowledge import FallbackKnowledge, MergedKnowledge


@pytest.fixture(scope="module")
def ollama() -> Iterator[FakeOllama]:
    with FakeOllama() as fake:
        yield fake


def settings_for(tmp_path: Path, **extra: object) -> Settings:
    return Settings(
        _env_file=None, data_dir=tmp_path / "data", default_docs=FIXTURES / "kb", **extra
    )  # type: ignore[call-arg]


async def test_maxkb_backend_answers_and_falls_back_to_the_embedded_base(
    tmp_path: Path, ollama: FakeOllama
):
    with FakeMaxKB() as maxkb:
        settings = settings_for(
            tmp_path,
            ollama_url=ollama.url,
            knowledge_backend="maxkb",
            maxkb_url=maxkb.url,
            maxkb_token=DEFAULT_USER_TOKEN,
            maxkb_knowledge_ids=[FIXTURE_KNOWLEDGE_ID],
        )
        services = services_from_settings(settings)
        assert isinstance(services.knowledge, FallbackKnowledge)
        ensure_default_knowledge(services.embedded["default"], settings)
        set_services(services)
        try:
            async with LoopSqliteSaver.open(tmp_path / "c.sqlite") as saver:
                graph = build(saver)
                result = await run_turn(graph, "mk", "广三铁路在哪年建成？", Context())
                assert result.citations[0]["source"].startswith("MaxKB · ")
                assert "广三铁路" in result.answer and not result.degraded
                maxkb.stop()
                fallback = await run_turn(graph, "mk2", "星尘打印机保修多久？", Context())
                assert fallback.citations[0]["source"] == "kb/stardust.md"
                assert "星尘打印机整机保修两年" in fallback.answer
        finally:
            set_services(None)
            services.close()


async def test_several_knowledge_bases_are_searched_together(tmp_path: Path):
    settings = settings_for(tmp_path)
    services = services_from_settings(settings)
    try:
        services.embedded["default"].add_path(FIXTURES / "kb" / "stardust.md")
        extra = await services.knowledge_for(["robots"])
        extra.add_path(FIXTURES / "kb" / "moonlight.md")  # type: ignore[attr-defined]
        assert await services.knowledge_for(["default"]) is services.knowledge
        both = await services.knowledge_for(["default", "robots"])
        assert isinstance(both, MergedKnowledge)
        found = await both.search("售价", 4)
        assert {p["kb"] for p in found} == {"default", "robots"}
        only_robots = await (await services.knowledge_for(["robots"])).search("售价", 4)
        assert {p["kb"] for p in only_robots} == {"robots"}
    finally:
        services.close()


def test_unconfigured_reranker_falls_back_to_lexical_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    services = services_from_settings(settings_for(tmp_path))
    try:
        assert sorted(services.rerankers) == ["lexical", "none"]
        with caplog.at_level(logging.WARNING):
            assert services.reranker("embedding").name == "lexical"
            assert services.reranker("embedding").name == "lexical"
        assert caplog.text.count("reranker 'embedding' is not configured") == 1
    finally:
        services.close()


def test_embedding_settings_wire_hybrid_search_and_rerankers(tmp_path: Path, ollama: FakeOllama):
    settings = settings_for(
        tmp_path,
        ollama_url=ollama.url,
        embed_model="qwen3-embedding:0.6b",
        rerank_model="dengcao/Qwen3-Reranker-0.6B:Q8_0",
    )
    services = services_from_settings(settings)
    try:
        assert sorted(services.rerankers) == ["embedding", "lexical", "none", "qwen3-reranker"]
        kb = services.embedded["default"]
        ensure_default_knowledge(kb, settings)
        assert kb.embedder is not None and kb.count() == 8
        assert len(ollama.calls("/api/embed")) >= 1
    finally:
        services.close()


def test_default_docs_ingest_survives_ollama_down(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    settings = settings_for(
        tmp_path, ollama_url="http://127.0.0.1:9", embed_model="qwen3-embedding:0.6b"
    )
    services = services_from_settings(settings)
    try:
        with caplog.at_level(logging.WARNING):
            ensure_default_knowledge(services.embedded["default"], settings)
        assert services.embedded["default"].count() == 8
        assert "keyword search only" in caplog.text
    finally:
        services.close()
