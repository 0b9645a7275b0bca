"""The long-lived objects nodes use: knowledge backends, rerankers, chat models, the audit log.

The graph's `Context` holds only choices (names, numbers); the objects those choices select
live here, created once per process by the server, the CLI or a test, or on first use when a
LangGraph server (`langgraph dev`) hosts the graph.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from circuitbreaker import CircuitBreaker
from langchain_core.messages import BaseMessage
from langchain_core.tools import StructuredTool

from agent import backends, prompts
from agent.audit import AuditLog
from agent.context import Context
from agent.models import ChatModelFactory, OllamaChatModels, call_model, ollama_breaker
from agent.settings import Settings, get_settings
from tools.base import KnowledgeBackend
from tools.embeddings import Embedder, EmbeddingError
from tools.knowledge import MergedKnowledge, make_search_tool
from tools.rerank import LexicalReranker, NoReranker, Reranker

if TYPE_CHECKING:
    from tools.kb import EmbeddedKB

log = logging.getLogger(__name__)

T = TypeVar("T")


def _tool_key(ctx: Context) -> tuple[Any, ...]:
    return (
        ctx.knowledge_bases,
        ctx.reranker,
        ctx.top_k,
        ctx.rerank_top_n,
        ctx.relevance_threshold,
        ctx.evidence_ratio,
        ctx.prompt_variant,
    )


def default_rerankers() -> dict[str, Reranker]:
    return {"lexical": LexicalReranker(), "none": NoReranker()}


@dataclass
class Services:
    settings: Settings
    knowledge: KnowledgeBackend
    """The default backend: the embedded base named by the settings, or MaxKB."""
    chat_models: ChatModelFactory
    rerankers: dict[str, Reranker] = field(default_factory=default_rerankers)
    audit: AuditLog | None = None
    embedded: dict[str, EmbeddedKB] = field(default_factory=dict)
    """Open embedded knowledge bases by name; more open on demand (`knowledge_for`)."""
    embedder: Embedder | None = None
    breaker: CircuitBreaker = field(default_factory=ollama_breaker)
    """Shared by every chat model call of the process."""
    on_outage: Callable[[str], None] | None = None
    """Told the dependency's name when a call fails for an outage (metrics)."""
    inline_io: bool = True
    """Sub-millisecond SQLite work in a node (a keyword search of an embedded knowledge base, a
    feedback row) runs on the event loop, where a hand-off to a worker thread costs more than
    the work. False for a loop that is not ours
    to block: a LangGraph server (`langgraph dev`) shares it with every run and refuses blocking
    calls on it."""
    _warned: set[str] = field(default_factory=set)

    _bound: dict[tuple[Any, ...], Any] = field(default_factory=dict)
    _opening: threading.Lock = field(default_factory=threading.Lock)

    def report_outage(self, dependency: str) -> None:
        if self.on_outage is not None:
            self.on_outage(dependency)

    async def run_io(self, work: Callable[[], T]) -> T:
        """`work()`, which may touch SQLite, on the loop or in a worker thread (`inline_io`)."""
        return work() if self.inline_io else await asyncio.to_thread(work)

    async def chat_model(self, name: str, *, reasoning: bool, temperature: float) -> Any:
        """A chat model from the factory, built once per choice in a worker thread: its HTTP
        clients load the CA certificates, tens of milliseconds the event loop cannot spare."""
        key = ("chat", name, reasoning, temperature)
        if key not in self._bound:
            self._bound[key] = await asyncio.to_thread(
                self.chat_models, name, reasoning=reasoning, temperature=temperature
            )
        return self._bound[key]

    async def call_model(
        self, runnable: Any, messages: list[BaseMessage], ctx: Context, *, stream: bool = False
    ) -> Any:
        return await call_model(
            runnable,
            messages,
            breaker=self.breaker,
            deadline_s=self.settings.ollama_timeout,
            turn_deadline=ctx.deadline,
            on_outage=self.on_outage,
            stream=stream,
        )

    async def answer_model(self, ctx: Context, *, with_tools: bool) -> Any:
        """The answer model, with the search tool bound when allowed; built once per setup
        (binding converts the tool schema, a cost not worth paying every turn)."""
        key = ("answer", ctx.chat_model, ctx.thinking, ctx.temperature, with_tools, *_tool_key(ctx))
        if key not in self._bound:
            model = await self.chat_model(
                ctx.chat_model, reasoning=ctx.thinking, temperature=ctx.temperature
            )
            if with_tools:
                model = model.bind_tools([await self.search_tool(ctx)])
            self._bound[key] = model
        return self._bound[key]

    async def classifier(self, ctx: Context, schema: type) -> Any:
        """The classify model with its structured output, built once per model."""
        key = ("classify", ctx.classify_model, schema)
        if key not in self._bound:
            model = await self.chat_model(ctx.classify_model, reasoning=False, temperature=0.0)
            self._bound[key] = model.with_structured_output(
                schema, method="json_schema", include_raw=True
            )
        return self._bound[key]

    async def knowledge_for(self, names: Sequence[str]) -> KnowledgeBackend:
        """The backend for a profile's or tenant's knowledge bases.

        MaxKB carries its own knowledge ids in the settings, so names select embedded bases
        only; the default backend serves when the names are the default ones. An embedded base
        not yet open opens in a worker thread (it creates its folder and tables).
        """
        if not names or list(names) == [self.settings.kb_name] or self.embedded == {}:
            return self.knowledge
        if any(name not in self.embedded for name in names):
            await asyncio.to_thread(lambda: [self.embedded_kb(name) for name in names])
        bases: list[KnowledgeBackend] = [self.embedded[name] for name in names]
        return bases[0] if len(bases) == 1 else MergedKnowledge(bases)

    def embedded_kb(self, name: str) -> EmbeddedKB:
        """The embedded knowledge base of that name, opened on first use (once, when two
        threads ask at the same time); searches and the admin's uploads share it, so its write
        lock orders them."""
        with self._opening:
            if name not in self.embedded:
                from tools.kb import EmbeddedKB

                self.embedded[name] = EmbeddedKB(
                    self.settings.kb_path, name, self.embedder, inline=self.inline_io
                )
        return self.embedded[name]

    async def search_tool(self, ctx: Context) -> StructuredTool:
        """The follow-up knowledge search the answer model may call, tuned by the run context."""
        return make_search_tool(
            await self.knowledge_for(ctx.knowledge_bases),
            self.reranker(ctx.reranker),
            top_k=ctx.top_k,
            top_n=ctx.rerank_top_n,
            threshold=ctx.relevance_threshold,
            ratio=ctx.evidence_ratio,
            description=prompts.load("search_tool", ctx.prompt_variant),
        )

    def reranker(self, name: str) -> Reranker:
        """The named strategy; lexical (with one warning) when it is not configured here."""
        if name in self.rerankers:
            return self.rerankers[name]
        if name not in self._warned:
            self._warned.add(name)
            log.warning(
                "reranker %r is not configured (needs QQRAG_EMBED_MODEL or QQRAG_RERANK_MODEL); "
                "using lexical",
                name,
            )
        return self.rerankers["lexical"]

    def close(self) -> None:
        for kb in self.embedded.values():
            kb.close()
        if self.audit is not None:
            self.audit.close()


def services_from_settings(settings: Settings, *, inline_io: bool = True) -> Services:
    """Production wiring: the knowledge backend, rerankers and embedder the settings pick
    (`agent.backends`), Ollama chat models, the audit log. `inline_io`: see `Services`."""
    from tools.kb import EmbeddedKB

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    prompts.preload()
    embedder = backends.embedder(settings)
    embedded = EmbeddedKB(settings.kb_path, settings.kb_name, embedder, inline=inline_io)
    services = Services(
        settings=settings,
        knowledge=embedded,
        chat_models=OllamaChatModels(settings),
        rerankers=backends.rerankers(settings, embedder),
        audit=AuditLog(settings.audit_path),
        embedded={settings.kb_name: embedded},
        embedder=embedder,
        inline_io=inline_io,
    )
    services.knowledge = backends.knowledge(settings, embedded, services.report_outage)
    return services


_NO_VECTORS = "vectors not built, keyword search only until Ollama answers: %s"


def ensure_default_knowledge(kb: EmbeddedKB, settings: Settings) -> None:
    """A fresh install answers questions about itself: ingest the user guide into an empty base.

    Vectors are best effort here: without Ollama the passages are still searchable by keyword,
    and the next ingest (or `qqrag kb reindex`) adds the missing vectors.
    """
    if kb.count() == 0 and settings.default_docs.is_dir():
        # Said before, since it takes a while, and in Chinese: the operator reads it.
        log.info(
            "首次启动：知识库 %s 是空的，正在导入 %s 里的文档（QQRAG_DEFAULT_DOCS，默认是自带的"
            "用户指南）；以后不再自动导入，自己的文档用 qqrag kb add 导入",
            kb.name,
            settings.default_docs,
        )
        # Sources read "docs/install.md" rather than "install.md": clearer in a citation.
        report = kb.add_path(settings.default_docs, root=settings.default_docs.parent)
        log.info(
            "knowledge base %s was empty: ingested %d passages from %s",
            kb.name,
            report.passages_added,
            settings.default_docs,
        )
        for failure in report.failed:
            log.warning("user guide file not ingested: %s: %s", failure.file, failure.reason)
        if report.vectors_error is not None:
            log.warning(_NO_VECTORS, report.vectors_error)
    elif kb.embedder is not None:
        try:
            kb.reindex_vectors()
        except EmbeddingError as exc:
            log.warning(_NO_VECTORS, exc)


_current: Services | None = None
_setting_up = threading.Lock()


def set_services(services: Services | None) -> None:
    global _current
    _current = services


def _hosted_services() -> Services:
    """Services for a graph hosted by someone else's server (`langgraph dev`), which sets up
    nothing for us: built from the settings, the default knowledge base filled as `qqrag serve`
    fills it, and kept off the host's event loop (`inline_io=False`)."""
    global _current
    # Concurrent first runs: one sets up, the others wait for it and share the result.
    with _setting_up:
        if _current is None:
            settings = get_settings()
            services = services_from_settings(settings, inline_io=False)
            ensure_default_knowledge(services.embedded[settings.kb_name], settings)
            _current = services
        return _current


async def get_services() -> Services:
    """The process's services: those the server, the CLI or a test set, else built on first
    use in a worker thread, since setting up creates folders, opens databases and loads the
    jieba dictionary, none of which may block the event loop."""
    return _current if _current is not None else await asyncio.to_thread(_hosted_services)
