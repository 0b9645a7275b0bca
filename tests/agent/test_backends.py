"""Each setting picks its implementation, and the tools get the settings' values."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis
from pydantic import SecretStr

from agent import backends
from agent.policy.admission import LocalAdmission
from agent.policy.quota import QuotaLimits, SqliteQuotaStore
from agent.policy.redis_store import (
    RedisAdmission,
    RedisQuotaStore,
    RedisThreadLocks,
    SharedStateError,
)
from agent.settings import Settings
from agent.threads import FileKeyedLocks
from evals.harness import free_port
from tools.kb import EmbeddedKB
from tools.knowledge import FallbackKnowledge
from tools.maxkb import MaxKBConfig, MaxKBKnowledge
from tools.rerank import Qwen3Reranker

EMBED_MODEL = "qwen3-embedding:0.6b"
RERANK_MODEL = "dengcao/Qwen3-Reranker-0.6B:Q8_0"
APP_KEY = "application-0123456789abcdef0123456789abcdef"


def policy_settings(data_dir: Path, **values: Any) -> Settings:
    return Settings(
        data_dir=data_dir,
        quota_user_rpm=5,
        quota_group_rpm=6,
        quota_user_daily_tokens=800,
        quota_group_daily_tokens=900,
        workers=3,
        _env_file=None,  # type: ignore[call-arg]
        **values,
    )


def test_local_state_lives_in_the_data_folder_and_each_process(tmp_path: Path) -> None:
    settings = policy_settings(tmp_path, max_inflight_turns=10)
    assert backends.shared_state_client(settings) is None

    quota = backends.quota_store(settings)
    admission = backends.admission(settings)
    locks = backends.thread_locks(settings)

    assert isinstance(quota, SqliteQuotaStore)
    assert quota.limits == QuotaLimits(5, 6, 800, 900)
    assert settings.quota_path.exists()
    # Three workers keep the bound of ten together: four each, rounded up.
    assert isinstance(admission, LocalAdmission)
    assert admission.limit == 4
    assert isinstance(locks, FileKeyedLocks)
    assert (tmp_path / "threads.lock").exists()
    quota.close()
    locks.close()


def test_redis_state_shares_one_client_under_the_prefix(tmp_path: Path) -> None:
    settings = policy_settings(
        tmp_path,
        shared_state="redis",
        redis_url="redis://redis:6379/0",
        redis_prefix="site-a:",
        max_inflight_turns=7,
    )
    # Made without connecting: the factories only wire it in.
    client = redis.Redis(port=free_port())

    quota = backends.quota_store(settings, client)
    admission = backends.admission(settings, client)
    locks = backends.thread_locks(settings, client)

    assert isinstance(quota, RedisQuotaStore)
    assert quota.limits == QuotaLimits(5, 6, 800, 900)
    assert quota._client is client and quota._prefix == "site-a:quota:"
    # One bound across every process: no share per worker.
    assert isinstance(admission, RedisAdmission)
    assert admission.limit == 7
    assert admission._client is client and admission._key == "site-a:admission"
    assert isinstance(locks, RedisThreadLocks)
    assert locks._client is client and locks._prefix == "site-a:thread:"
    assert not settings.quota_path.exists()
    client.close()


def test_an_unreachable_shared_redis_stops_the_start_naming_the_setting(tmp_path: Path) -> None:
    settings = policy_settings(
        tmp_path, shared_state="redis", redis_url=f"redis://127.0.0.1:{free_port()}/0"
    )
    with pytest.raises(SharedStateError, match="QQRAG_REDIS_URL"):
        backends.shared_state_client(settings)
    with pytest.raises(SharedStateError, match="QQRAG_REDIS_URL"):
        backends.quota_store(settings)


def test_embedder(settings: Settings) -> None:
    assert backends.embedder(settings) is None
    configured = settings.model_copy(
        update={"embed_model": EMBED_MODEL, "embed_batch_size": 8, "ollama_timeout": 9.0}
    )
    embedder = backends.embedder(configured)
    assert embedder is not None
    assert (embedder.url, embedder.model, embedder.batch_size) == (
        settings.ollama_url,
        EMBED_MODEL,
        8,
    )


def test_rerankers_offer_what_is_configured(settings: Settings) -> None:
    assert sorted(backends.rerankers(settings, None)) == ["lexical", "none"]
    embedder = backends.embedder(settings.model_copy(update={"embed_model": EMBED_MODEL}))
    assert sorted(backends.rerankers(settings, embedder)) == ["embedding", "lexical", "none"]
    configured = settings.model_copy(
        update={"rerank_model": RERANK_MODEL, "rerank_concurrency": 3, "ollama_timeout": 9.0}
    )
    qwen3 = backends.rerankers(configured, None)["qwen3-reranker"]
    assert isinstance(qwen3, Qwen3Reranker)
    assert (qwen3.url, qwen3.model) == (settings.ollama_url, RERANK_MODEL)


def test_maxkb_config_reads_the_maxkb_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QQRAG_MAXKB_KNOWLEDGE_IDS", "a, b")
    settings = Settings(
        maxkb_url="http://maxkb:8080",
        maxkb_mode="app_hit_test_v1",
        maxkb_api_key=SecretStr(APP_KEY),
        maxkb_token=SecretStr("tok"),
        maxkb_application_id="app-1",
        maxkb_v1_method="get",
        maxkb_search_mode="embedding",
        maxkb_similarity=0.4,
        maxkb_timeout=3.0,
        maxkb_retries=1,
        _env_file=None,  # type: ignore[call-arg]
    )

    config = backends.maxkb_config(settings)

    assert config == MaxKBConfig(
        url="http://maxkb:8080",
        mode="app_hit_test_v1",
        api_key=APP_KEY,
        token="tok",
        application_id="app-1",
        knowledge_ids=("a", "b"),
        v1_method="get",
        search_mode="embedding",
        similarity=0.4,
        timeout=3.0,
        retries=1,
    )
    config.validate()


@pytest.mark.parametrize(
    ("backend", "fallback", "picked"),
    [
        ("embedded", True, EmbeddedKB),
        ("maxkb", True, FallbackKnowledge),
        ("maxkb", False, MaxKBKnowledge),
    ],
)
def test_knowledge_backend_follows_the_settings(
    tmp_path: Path, backend: str, fallback: bool, picked: type
) -> None:
    settings = Settings(
        data_dir=tmp_path,
        knowledge_backend=backend,  # type: ignore[arg-type]
        maxkb_url="http://127.0.0.1:9",
        maxkb_api_key=SecretStr(APP_KEY),
        maxkb_application_id="app-1",
        maxkb_mode="app_hit_test_v1",
        maxkb_fallback_embedded=fallback,
        _env_file=None,  # type: ignore[call-arg]
    )
    embedded = EmbeddedKB(tmp_path / "kb.sqlite", "default")
    outages: list[str] = []
    try:
        knowledge = backends.knowledge(settings, embedded, outages.append)
        assert isinstance(knowledge, picked)
        if isinstance(knowledge, FallbackKnowledge):
            assert knowledge.fallback is embedded
            maxkb = knowledge.primary
        else:
            maxkb = knowledge
        if isinstance(maxkb, MaxKBKnowledge):
            assert maxkb.on_outage is not None
            maxkb.on_outage("maxkb")
            assert outages == ["maxkb"]
    finally:
        embedded.close()
