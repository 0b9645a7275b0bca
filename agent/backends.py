"""Where the settings pick each backend: one factory per axis, the only code that names an
implementation. Everything else sees the interface (`KnowledgeBackend`, `QuotaStore`,
`Admission`, `ThreadLocks`, `Embedder`, `Reranker`), and `tools/` takes plain arguments, never
`Settings`.

The checkpointer's factory is `agent.checkpoints.open_checkpointer`: it is an async context
manager that opens a database pool, and lives beside the savers it picks.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
import redis

from agent.policy.admission import Admission, LocalAdmission
from agent.policy.quota import QuotaLimits, QuotaStore, SqliteQuotaStore
from agent.policy.redis_store import (
    RedisAdmission,
    RedisQuotaStore,
    RedisThreadLocks,
    connect_redis,
)
from agent.settings import Settings
from agent.threads import FileKeyedLocks, ThreadLocks
from tools.base import KnowledgeBackend
from tools.embeddings import Embedder, OllamaEmbedder
from tools.knowledge import FallbackKnowledge
from tools.maxkb import AccessLimitNote, MaxKBConfig, MaxKBKnowledge
from tools.rerank import EmbeddingReranker, LexicalReranker, NoReranker, Qwen3Reranker, Reranker


def shared_state_client(settings: Settings) -> redis.Redis | None:
    """The one Redis client of the shared-state backends when the settings share state there,
    else None. Pass it to `quota_store`, `admission` and `thread_locks` (each connects one of
    its own without it): the quota store closes it at shutdown."""
    match settings.shared_state:
        case "redis":
            return connect_redis(settings.redis_url)
        case "local":
            return None


def quota_limits(settings: Settings) -> QuotaLimits:
    return QuotaLimits(
        user_rpm=settings.quota_user_rpm,
        group_rpm=settings.quota_group_rpm,
        user_daily_tokens=settings.quota_user_daily_tokens,
        group_daily_tokens=settings.quota_group_daily_tokens,
    )


def quota_store(settings: Settings, client: redis.Redis | None = None) -> QuotaStore:
    """SQLite in the data folder, or Redis (through `client`, else a client of its own)."""
    limits = quota_limits(settings)
    match settings.shared_state:
        case "redis":
            return RedisQuotaStore(_redis(settings, client), limits, prefix=settings.redis_prefix)
        case "local":
            return SqliteQuotaStore(settings.quota_path, limits)


def admission(settings: Settings, client: redis.Redis | None = None) -> Admission:
    """The bound on turns in flight: one count in Redis, or one per worker process."""
    match settings.shared_state:
        case "redis":
            return RedisAdmission(
                _redis(settings, client), settings.max_inflight_turns, prefix=settings.redis_prefix
            )
        case "local":
            # Each worker process counts its own turns: together they keep the configured bound.
            return LocalAdmission(-(-settings.max_inflight_turns // settings.workers))


def thread_locks(settings: Settings, client: redis.Redis | None = None) -> ThreadLocks:
    """One turn at a time per conversation: across replicas (Redis) or this machine's workers."""
    match settings.shared_state:
        case "redis":
            return RedisThreadLocks(_redis(settings, client), prefix=settings.redis_prefix)
        case "local":
            return FileKeyedLocks(settings.data_dir / "threads.lock")


def _redis(settings: Settings, client: redis.Redis | None) -> redis.Redis:
    return connect_redis(settings.redis_url) if client is None else client


def embedder(settings: Settings) -> OllamaEmbedder | None:
    """The configured embedder, None when no embedding model is set (lexical retrieval only)."""
    if not settings.embed_model:
        return None
    return OllamaEmbedder(
        settings.ollama_url,
        settings.embed_model,
        batch_size=settings.embed_batch_size,
        timeout=settings.ollama_timeout,
    )


def rerankers(settings: Settings, embedder: Embedder | None) -> dict[str, Reranker]:
    """Every strategy the settings allow: lexical and none always, embedding with an embedder,
    qwen3-reranker with a rerank model."""
    strategies: dict[str, Reranker] = {"lexical": LexicalReranker(), "none": NoReranker()}
    if embedder is not None:
        strategies["embedding"] = EmbeddingReranker(embedder)
    if settings.rerank_model:
        strategies["qwen3-reranker"] = Qwen3Reranker(
            settings.ollama_url,
            settings.rerank_model,
            concurrency=settings.rerank_concurrency,
            timeout=settings.ollama_timeout,
        )
    return strategies


def maxkb_config(settings: Settings) -> MaxKBConfig:
    """Where and how to reach MaxKB, from the ``maxkb_*`` settings."""
    return MaxKBConfig(
        url=settings.maxkb_url,
        mode=settings.maxkb_mode,
        api_key=settings.maxkb_api_key.get_secret_value(),
        token=settings.maxkb_token.get_secret_value(),
        application_id=settings.maxkb_application_id,
        knowledge_ids=tuple(settings.maxkb_knowledge_ids),
        workspace=settings.maxkb_workspace,
        admin_path=settings.maxkb_admin_path,
        v1_method=settings.maxkb_v1_method,
        search_mode=settings.maxkb_search_mode,
        similarity=settings.maxkb_similarity,
        timeout=settings.maxkb_timeout,
        retries=settings.maxkb_retries,
    )


MAXKB_ACCESS_LIMIT_FILE = "maxkb-access-limit.json"
"""In the data folder: the daily access limit MaxKB last refused a search with, read by every
worker's /readyz and by `qqrag doctor`."""


def knowledge(
    settings: Settings,
    embedded: KnowledgeBackend,
    on_outage: Callable[[str], None],
    *,
    client: httpx.AsyncClient | None = None,
) -> KnowledgeBackend:
    """The default knowledge backend: the embedded base, or MaxKB (with the embedded base
    standing in while it is out, when the settings allow; through `client` when given).
    `on_outage` hears of every failed MaxKB search, even one the fallback covers or the open
    circuit skips: the operator should see MaxKB fail."""
    match settings.knowledge_backend:
        case "embedded":
            return embedded
        case "maxkb":
            note = AccessLimitNote(settings.data_dir / MAXKB_ACCESS_LIMIT_FILE)
            maxkb = MaxKBKnowledge(maxkb_config(settings), client=client, access_limit=note)
            maxkb.on_outage = on_outage
            if not settings.maxkb_fallback_embedded:
                return maxkb
            fallback = FallbackKnowledge(maxkb, embedded)
            fallback.on_outage = on_outage
            return fallback
