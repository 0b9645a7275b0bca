"""The long-lived objects nodes use: knowledge backend, rerankers, chat models.

The graph's `Context` holds only choices (names, numbers); the objects those choices select
live here, created once per process by the server, the CLI or a test.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from langchain_core.tools import StructuredTool

from agent.audit import AuditLog
from agent.context import Context
from agent.models import ChatModelFactory, OllamaChatModels
from agent.settings import Settings, get_settings
from tools.base import KnowledgeBackend
from tools.knowledge import make_search_tool
from tools.rerank import LexicalReranker, NoReranker, Reranker

if TYPE_CHECKING:
    from tools.kb import EmbeddedKB

log = logging.getLogger(__name__)


def default_rerankers() -> dict[str, Reranker]:
    return {"lexical": LexicalReranker(), "none": NoReranker()}


@dataclass
class Services:
    settings: Settings
    knowledge: KnowledgeBackend
    chat_models: ChatModelFactory
    rerankers: dict[str, Reranker] = field(default_factory=default_rerankers)
    audit: AuditLog | None = None

    def search_tool(self, ctx: Context) -> StructuredTool:
        """The follow-up knowledge search the answer model may call, tuned by the run context."""
        return make_search_tool(
            self.knowledge,
            self.reranker(ctx.reranker),
            top_k=ctx.top_k,
            top_n=ctx.rerank_top_n,
            threshold=ctx.relevance_threshold,
            variant=ctx.prompt_variant,
        )

    def reranker(self, name: str) -> Reranker:
        try:
            return self.rerankers[name]
        except KeyError:
            known = ", ".join(sorted(self.rerankers))
            raise ValueError(f"unknown reranker {name!r}; known: {known}") from None


def services_from_settings(settings: Settings) -> Services:
    """Production wiring: the embedded knowledge base and Ollama chat models."""
    from tools.kb import EmbeddedKB

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return Services(
        settings=settings,
        knowledge=EmbeddedKB(settings.kb_path, settings.kb_name),
        chat_models=OllamaChatModels(settings),
        audit=AuditLog(settings.audit_path),
    )


def ensure_default_knowledge(kb: EmbeddedKB, settings: Settings) -> None:
    """A fresh install answers questions about itself: ingest the user guide into an empty base."""
    if kb.count() == 0 and settings.default_docs.is_dir():
        # Sources read "docs/install.md" rather than "install.md": clearer in a citation.
        report = kb.add_path(settings.default_docs, root=settings.default_docs.parent)
        log.info(
            "knowledge base %s was empty: ingested %d passages from %s",
            kb.name,
            report.passages_added,
            settings.default_docs,
        )


_current: Services | None = None


def set_services(services: Services | None) -> None:
    global _current
    _current = services


def get_services() -> Services:
    """The process's services; built from the settings on first use (e.g. under `langgraph dev`)."""
    global _current
    if _current is None:
        _current = services_from_settings(get_settings())
    return _current
