"""Run-time choices for one turn: which models, how much evidence, which prompt variant."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from agent.settings import get_settings


@dataclass(kw_only=True)
class Context:
    """Chosen per run; defaults come from the process settings.

    Gray release (later) picks a different Context per group or user; evals pin one.
    """

    chat_model: str = field(
        default_factory=lambda: get_settings().chat_model,
        metadata={"description": "Ollama model that writes the answer, e.g. qwen3:8b."},
    )
    classify_model: str = field(
        default_factory=lambda: get_settings().effective_classify_model,
        metadata={"description": "Ollama model for intent and the standalone rewrite."},
    )
    thinking: bool = field(
        default_factory=lambda: get_settings().thinking,
        metadata={"description": "Let the answer model think first; thinking never reaches users."},
    )
    top_k: int = field(
        default_factory=lambda: get_settings().top_k,
        metadata={"description": "Passages fetched from the knowledge base per search."},
    )
    rerank_top_n: int = field(
        default_factory=lambda: get_settings().rerank_top_n,
        metadata={"description": "Passages kept after reranking and shown to the answer model."},
    )
    relevance_threshold: float = field(
        default_factory=lambda: get_settings().relevance_threshold,
        metadata={"description": "Reranked passages scoring below this (0..1) are not evidence."},
    )
    reranker: Literal["lexical", "embedding", "qwen3-reranker", "none"] = field(
        default_factory=lambda: get_settings().reranker,
        metadata={
            "description": "lexical: query-term coverage; embedding: cosine of Ollama embeddings; "
            "qwen3-reranker: P(yes) of a Qwen3-Reranker model; none: retrieval order."
        },
    )
    knowledge_bases: tuple[str, ...] = field(
        default_factory=lambda: (get_settings().kb_name,),
        metadata={"description": "Embedded knowledge bases searched together (MaxKB: its own)."},
    )
    prompt_variant: str = field(
        default_factory=lambda: get_settings().prompt_variant,
        metadata={"description": "Prompt files NAME.VARIANT.md override NAME.md when present."},
    )
    history_turns: int = field(
        default_factory=lambda: get_settings().history_turns,
        metadata={"description": "Earlier question/answer pairs shown to the models."},
    )
    rewrite: Literal["model", "history"] = field(
        default_factory=lambda: get_settings().rewrite,
        metadata={
            "description": "Follow-ups that lean on the conversation (它/那…, or few topic "
            "terms). model: the classify model rewrites them to stand alone, one more model "
            "call before the answer. history: no model call; intent by rules (commands, "
            "greetings, injections, else knowledge), retrieval searches the earlier questions "
            "too, and the answer model resolves the reference from the conversation it sees. "
            "classify_always asks the model regardless."
        },
    )
    keep_turns: int = field(
        default=20,
        metadata={"description": "Question/answer pairs a conversation keeps; older ones go."},
    )
    max_tool_rounds: int = field(
        default=2,
        metadata={"description": "Follow-up knowledge searches the answer model may make."},
    )
    max_attempts: int = field(
        default=2,
        metadata={"description": "Answer generations per turn: the first plus one regeneration."},
    )
    support_threshold: float = field(
        default=0.6,
        metadata={"description": "Share of a sentence's terms its cited passage must contain."},
    )
    classify_always: bool = field(
        default=False,
        metadata={
            "description": "Ask the classify model on every turn. By default rules decide "
            "when a question obviously stands alone (first turn, or no referring word and "
            "enough topic terms) and the model call is skipped."
        },
    )
    stream_tokens: bool = field(
        default=False,
        metadata={
            "description": "Stream the answer model's tokens (for a live preview); off, each "
            "reply comes back whole, which costs less when nobody watches."
        },
    )
    temperature: float = field(
        default=0.2, metadata={"description": "Sampling temperature of the answer model."}
    )
