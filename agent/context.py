"""Run-time choices for one turn: which models, how much evidence, which prompt variant."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from agent.settings import Settings, get_settings


def _same(value: Any) -> Any:
    return value


def _one_base(name: str) -> tuple[str, ...]:
    return (name,)


def setting(name: str, description: str, convert: Callable[[Any], Any] = _same) -> Any:
    """A field whose default is the process setting `name` (a `Settings` attribute), converted.

    The metadata names the setting, so `Context.from_settings` takes every such field from
    any settings object with this one mechanism, and a test can see which fields are mapped.
    """
    return field(
        default_factory=lambda: convert(getattr(get_settings(), name)),
        metadata={"description": description, "setting": name, "convert": convert},
    )


@dataclass(kw_only=True)
class Context:
    """Chosen per run; defaults come from the process settings.

    Gray release (later) picks a different Context per group or user; evals pin one.
    """

    chat_model: str = setting("chat_model", "Ollama model that writes the answer, e.g. qwen3:8b.")
    classify_model: str = setting(
        "effective_classify_model", "Ollama model for intent and the standalone rewrite."
    )
    thinking: bool = setting(
        "thinking", "Let the answer model think first; thinking never reaches users."
    )
    top_k: int = setting("top_k", "Passages fetched from the knowledge base per search.")
    rerank_top_n: int = setting(
        "rerank_top_n", "Passages kept after reranking and shown to the answer model."
    )
    relevance_threshold: float = setting(
        "relevance_threshold",
        "Reranked passages scoring below this (0..1) are not evidence; a question none "
        "reaches is answered 'not found'.",
    )
    evidence_ratio: float = setting(
        "evidence_ratio",
        "Evidence must also reach this share of the best passage's score: distractors "
        "beside a clear answer cost prefill time and mislead the model.",
    )
    reranker: Literal["lexical", "embedding", "qwen3-reranker", "none"] = setting(
        "reranker",
        "lexical: query-term coverage; embedding: cosine of Ollama embeddings; "
        "qwen3-reranker: P(yes) of a Qwen3-Reranker model; none: retrieval order.",
    )
    knowledge_bases: tuple[str, ...] = setting(
        "kb_name",
        "Embedded knowledge bases searched together (MaxKB: its own).",
        _one_base,
    )
    prompt_variant: str = setting(
        "prompt_variant", "Prompt files NAME.VARIANT.md override NAME.md when present."
    )
    history_turns: int = setting(
        "history_turns", "Earlier question/answer pairs shown to the models."
    )
    rewrite: Literal["model", "history"] = setting(
        "rewrite",
        "Follow-ups that lean on the conversation (它/那…, or few topic "
        "terms). model: the classify model rewrites them to stand alone, one more model "
        "call before the answer. history: no model call; intent by rules (commands, "
        "greetings, injections, else knowledge), retrieval searches the earlier questions "
        "too, and the answer model resolves the reference from the conversation it sees. "
        "classify_always asks the model regardless.",
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
    trace: bool = field(
        default=False,
        metadata={
            "description": "Send what each node did in full (rendered prompts, raw model "
            "output, passage texts) with the turn's node events, for `qqrag chat --trace` and "
            "the stream's trace; off, nothing of it is built."
        },
    )
    temperature: float = field(
        default=0.2, metadata={"description": "Sampling temperature of the answer model."}
    )
    deadline: float | None = field(
        default=None,
        metadata={
            "description": "When the turn must have its reply (time.monotonic()), set by the "
            "service: model calls get what is left, so a hanging model still leaves time for "
            "the degraded answer. None: each call gets QQRAG_OLLAMA_TIMEOUT."
        },
    )

    def __post_init__(self) -> None:
        # A context from JSON (LangGraph Studio's assistant settings, the LangGraph server's
        # API) brings a list; the services key their caches by these fields.
        self.knowledge_bases = tuple(self.knowledge_bases)

    @classmethod
    def from_settings(cls, settings: Settings) -> Context:
        """The defaults taken from `settings` rather than the process's."""
        return cls(
            **{
                f.name: f.metadata["convert"](getattr(settings, f.metadata["setting"]))
                for f in dataclasses.fields(cls)
                if "setting" in f.metadata
            }
        )
