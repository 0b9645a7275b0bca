"""Process settings: URLs, models, folders and limits, read from the environment and `.env`."""

from __future__ import annotations

import sys
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from agent.links import allowed_domain


def _default_docs_dir() -> Path:
    """The bundled user guide: `docs/` in a checkout, `share/qqrag/docs` for a wheel install."""
    checkout = Path(__file__).resolve().parent.parent / "docs"
    installed = Path(sys.prefix) / "share" / "qqrag" / "docs"
    return installed if not checkout.is_dir() and installed.is_dir() else checkout


class Settings(BaseSettings):
    """Everything that depends on the machine rather than on the conversation."""

    model_config = SettingsConfigDict(
        env_prefix="QQRAG_", env_file=".env", extra="ignore", populate_by_name=True
    )

    ollama_url: str = Field(
        default="http://127.0.0.1:11434",
        validation_alias=AliasChoices("QQRAG_OLLAMA_URL", "OLLAMA_HOST"),
        description="Ollama base URL, without /v1.",
    )
    ollama_timeout: float = Field(default=60.0, gt=0, description="Seconds per Ollama request.")
    chat_model: str = Field(default="qwen3:8b", description="Model that writes answers.")
    classify_model: str = Field(
        default="", description="Model for intent and rewrite; empty means the chat model."
    )
    thinking: bool = Field(default=False, description="Let the answer model think first.")
    data_dir: Path = Field(default=Path("data"), description="Knowledge base and checkpoints.")
    min_free_mb: int = Field(
        default=100,
        ge=0,
        description="Free space (MB) the data folder's disk must keep; below it /readyz says "
        "down, before turns start failing for want of space.",
    )
    kb_name: str = Field(default="default", description="Embedded knowledge base to search.")
    default_docs: Path = Field(
        default_factory=_default_docs_dir,
        description="Ingested into an empty knowledge base on first start.",
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    max_text_chars: int = Field(default=2000, ge=1, description="Longest accepted question.")
    group_thread_scope: Literal["member", "group"] = Field(
        default="member",
        description="member: one conversation per group member; group: one per group.",
    )
    top_k: int = Field(default=8, ge=1, le=50)
    rerank_top_n: int = Field(default=4, ge=1, le=20)
    relevance_threshold: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="The relevance gate: passages scoring below it are not evidence, and a "
        "question none reaches is answered 没有找到. 0.5 is the lexical score's calibrated gate.",
    )
    evidence_ratio: float = Field(
        default=0.8,
        ge=0.0,
        le=1.0,
        description="Evidence must also score this share of the best passage's score.",
    )
    prompt_variant: str = "default"
    prompts_dir: Path | None = Field(
        default=None, description="Folder searched for prompt files before the bundled ones."
    )
    history_turns: int = Field(default=4, ge=0, description="Earlier turns shown to the models.")
    rewrite: Literal["model", "history"] = Field(
        default="history",
        description="Follow-ups: model rewrites them with the classify model (one more call); "
        "history searches with the earlier questions and lets the answer model resolve them.",
    )

    embed_model: str = Field(
        default="",
        description="Ollama embedding model (e.g. qwen3-embedding:0.6b) for hybrid retrieval and "
        "the embedding reranker; empty means lexical retrieval only.",
    )
    embed_batch_size: int = Field(default=32, ge=1, le=512)
    reranker: Literal["lexical", "embedding", "qwen3-reranker", "none"] = Field(
        default="lexical", description="Default rerank strategy."
    )
    rerank_model: str = Field(
        default="",
        description="Ollama Qwen3-Reranker model for the qwen3-reranker strategy, e.g. "
        "dengcao/Qwen3-Reranker-0.6B:Q8_0.",
    )
    rerank_concurrency: int = Field(default=4, ge=1, le=64)

    knowledge_backend: Literal["embedded", "maxkb"] = Field(
        default="embedded", description="Where retrieve searches."
    )
    maxkb_url: str = Field(default="", description="MaxKB base URL, e.g. http://maxkb:8080.")
    maxkb_mode: Literal["app_hit_test_v1", "knowledge_hit_test_v2", "app_chat_v2"] = Field(
        default="knowledge_hit_test_v2",
        description="app_hit_test_v1: v1 application hit test with an application key; "
        "knowledge_hit_test_v2: v2 knowledge hit test with a user token; "
        "app_chat_v2: v2 application chat with an application key, citations from the record.",
    )
    maxkb_api_key: SecretStr = Field(
        default=SecretStr(""), description="MaxKB application key (application-...)."
    )
    maxkb_token: SecretStr = Field(default=SecretStr(""), description="MaxKB v2 user token.")
    maxkb_application_id: str = ""
    maxkb_knowledge_ids: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="v2 knowledge base ids, comma-separated."
    )
    maxkb_workspace: str = "default"
    maxkb_admin_path: str = "/admin"
    maxkb_v1_method: Literal["auto", "get", "put"] = Field(
        default="auto",
        description="v1 hit test: GET up to v1.10.8-lts, PUT from v1.10.9-lts; auto detects.",
    )
    maxkb_search_mode: Literal["embedding", "keywords", "blend"] = "blend"
    maxkb_similarity: float = Field(default=0.0, ge=0.0, le=2.0)
    maxkb_timeout: float = Field(default=10.0, gt=0)
    maxkb_retries: int = Field(default=2, ge=0, le=5)
    maxkb_fallback_embedded: bool = Field(
        default=True, description="Search the embedded knowledge base while MaxKB is down."
    )

    quota_user_rpm: int = Field(default=20, ge=0, description="Questions per minute per user.")
    quota_group_rpm: int = Field(default=120, ge=0, description="Questions per minute per group.")
    quota_user_daily_tokens: int = Field(
        default=200_000, ge=0, description="Model tokens per user per day (0: unlimited)."
    )
    quota_group_daily_tokens: int = Field(
        default=2_000_000, ge=0, description="Model tokens per group per day (0: unlimited)."
    )
    max_inflight_turns: int = Field(
        default=8, ge=0, description="Turns in flight toward Ollama; past it, a quick busy reply."
    )
    turn_deadline: float = Field(
        default=60.0,
        gt=0,
        description="Seconds within which every turn gets its reply (an answer, a degraded "
        "answer or a short message), waiting for its conversation included.",
    )
    max_waiting_per_conversation: int = Field(
        default=1,
        ge=0,
        description="Messages of one conversation that may wait while it is being answered; "
        "past it, a quick '上一个问题还在回答' reply.",
    )
    workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Service processes on this machine (qqrag serve); more than one uses more "
        "CPU cores. They share the data folder; conversations stay one turn at a time.",
    )
    sensitive_words_dir: Path | None = Field(
        default=None,
        description="Folder of sensitive-word lists (*.txt); default DATA_DIR/sensitive_words.",
    )
    link_allowlist: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Domains whose links answers may show, comma-separated, for every tenant "
        "(and the open mode); a tenant's own link domains add to them. Other links are hidden.",
    )
    profiles_path: Path | None = Field(
        default=None, description="Gray-release profiles (YAML); default DATA_DIR/profiles.yaml."
    )

    checkpointer: Literal["sqlite", "postgres"] = Field(
        default="sqlite",
        description="Where conversations are kept: sqlite (DATA_DIR/checkpoints.sqlite, the "
        "worker processes of one machine) or postgres (POSTGRES_URL, shared by replicas on "
        "several machines).",
    )
    postgres_url: str = Field(
        default="",
        description="PostgreSQL for the postgres checkpointer, e.g. "
        "postgresql://qqrag:secret@db:5432/qqrag; tables are created on first start.",
    )
    postgres_timeout: float = Field(
        default=5.0,
        gt=0,
        description="Seconds to connect to PostgreSQL or to wait for a free pooled connection.",
    )
    shared_state: Literal["local", "redis"] = Field(
        default="local",
        description="Where quotas, the in-flight bound and conversation locks live: local "
        "(DATA_DIR, for the worker processes of one machine) or redis (REDIS_URL, shared by "
        "replicas on several machines).",
    )
    redis_url: str = Field(
        default="", description="Redis for shared_state=redis, e.g. redis://redis:6379/0."
    )
    redis_prefix: str = Field(
        default="qqrag:",
        min_length=1,
        description="Prefix of every Redis key, so several deployments can share one Redis.",
    )

    @field_validator("maxkb_knowledge_ids", "link_allowlist", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("link_allowlist")
    @classmethod
    def _normalise_domains(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(map(allowed_domain, value)))

    @field_validator("ollama_url")
    @classmethod
    def _normalise_ollama_url(cls, value: str) -> str:
        # OLLAMA_HOST is often written the way `ollama serve` reads it: "0.0.0.0:11434".
        url = value.strip().rstrip("/")
        # The OpenAI-compatible prefix is a frequent mistake; the native API lives at the root.
        url = url.removesuffix("/v1").removesuffix("/api")
        if "://" not in url:
            url = f"http://{url}"
        return url.replace("://0.0.0.0", "://127.0.0.1")

    @property
    def kb_path(self) -> Path:
        return self.data_dir / "kb.sqlite"

    @property
    def tenants_path(self) -> Path:
        return self.data_dir / "tenants.sqlite"

    @property
    def quota_path(self) -> Path:
        return self.data_dir / "quota.sqlite"

    @property
    def effective_sensitive_words_dir(self) -> Path:
        return self.sensitive_words_dir or self.data_dir / "sensitive_words"

    @property
    def effective_profiles_path(self) -> Path:
        return self.profiles_path or self.data_dir / "profiles.yaml"

    @property
    def audit_path(self) -> Path:
        return self.data_dir / "audit.sqlite"

    @property
    def checkpoint_path(self) -> Path:
        return self.data_dir / "checkpoints.sqlite"

    @property
    def effective_classify_model(self) -> str:
        return self.classify_model or self.chat_model


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
