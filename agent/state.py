"""The graph's state: the conversation, plus what each node found during the current turn."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from langchain_core.messages import AnyMessage
from langgraph.graph import add_messages
from typing_extensions import TypedDict

from tools.base import Passage

Intent = Literal["knowledge", "chitchat", "command", "blocked"]
DraftSource = Literal["model", "extractive", "not_found"]


class Citation(TypedDict):
    """One entry of the numbered citation list sent with an answer."""

    index: int
    title: str
    source: str
    passage_id: str
    snippet: str


class SentenceCheck(TypedDict):
    """How one sentence of the draft fared in the citation check."""

    text: str
    cited: list[int]
    status: Literal["supported", "repaired", "unsupported", "uncited"]
    score: float


class RemovedSentence(TypedDict):
    """A sentence the citation check dropped, and why (in words a prompt engineer reads)."""

    text: str
    reason: str


class Verdict(TypedDict):
    """The citation check's findings; evals and the audit log read it."""

    supported_ratio: float | None
    """Supported cited sentences / sentences that made claims; None when nothing was claimed."""
    removed: list[RemovedSentence]
    """Sentences dropped because no passage supports them."""
    invalid_refs: list[int]
    """`[n]` markers that named no passage."""
    sentences: list[SentenceCheck]
    refusal: bool
    """The draft says the knowledge base has no answer."""


@dataclass(kw_only=True)
class InputState:
    """What a caller sends: the new user message (earlier ones come from the checkpoint)."""

    messages: Annotated[list[AnyMessage], add_messages] = field(default_factory=list)
    """The conversation: user questions and final answers, oldest first."""


@dataclass(kw_only=True)
class State(InputState):
    """Everything the nodes share. Per-turn fields are reset by `classify` at each turn."""

    intent: Intent = "knowledge"
    """What the user wants this turn."""
    query: str = ""
    """What retrieval searches for: the question rewritten to stand alone, or, for a follow-up
    left unrewritten (`Context.rewrite`), the earlier questions it leans on followed by it."""
    question: str = ""
    """The question put to the answer model and that the citation check weighs claims against:
    the standalone rewrite, or the user's own words when the answer model is left to resolve
    the reference from the conversation (a search string is no question to show)."""
    candidates: list[Passage] = field(default_factory=list)
    """Passages from the knowledge base, in retrieval order."""
    ranked: list[Passage] = field(default_factory=list)
    """The candidates reordered by the reranker, with 0..1 scores."""
    evidence: list[Passage] = field(default_factory=list)
    """Reranked passages above the threshold; evidence [n] is `evidence[n-1]`."""
    scratch: list[AnyMessage] = field(default_factory=list)
    """This turn's answer ⇄ tools exchange (tool calls and their results)."""
    tool_rounds: int = 0
    """Follow-up searches made this turn."""
    attempts: int = 0
    """Answer generations this turn."""
    feedback: str = ""
    """Why the last draft was rejected by the citation check (fed to the regeneration)."""
    draft: str = ""
    """The answer model's text before the citation check."""
    draft_source: DraftSource = "model"
    """Who wrote the draft: the model, the extractive fallback, or the not-found reply."""
    answer: str = ""
    """The final answer text with renumbered `[n]` markers."""
    citations: list[Citation] = field(default_factory=list)
    """The passages the final answer cites, numbered as in the answer."""
    verdict: Verdict | None = None
    """The citation check's findings for the final answer."""
    sources: list[Passage] = field(default_factory=list)
    """The full passages behind the last knowledge answer's citations, in citation order;
    kept across command turns so `/原文 n` can show them."""
    degraded: bool = False
    """A dependency failed this turn and a fallback produced the answer."""
    knowledge_error: str = ""
    """Why the knowledge base could not be searched this turn; empty when it could."""
    model_calls: int = 0
    """Chat model calls this turn."""
    tokens: int = 0
    """Prompt plus completion tokens reported by Ollama this turn."""
    prompt_tokens: int = 0
    """Of `tokens`, those of the prompts (what the models read)."""
    completion_tokens: int = 0
    """Of `tokens`, those the models wrote."""


TURN_RESET: dict[str, object] = {
    "candidates": [],
    "ranked": [],
    "evidence": [],
    "scratch": [],
    "tool_rounds": 0,
    "attempts": 0,
    "feedback": "",
    "draft": "",
    "draft_source": "model",
    "answer": "",
    "citations": [],
    "verdict": None,
    "degraded": False,
    "knowledge_error": "",
    "model_calls": 0,
    "tokens": 0,
    "prompt_tokens": 0,
    "completion_tokens": 0,
}
"""Per-turn fields as a new turn starts: nothing of the previous turn leaks into this one."""
