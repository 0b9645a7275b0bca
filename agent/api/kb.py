"""`/v1/kb`: the knowledge bases a key may read, their documents' passages, and the hit test (a
search as a turn makes it: retrieval, the reranker and the relevance gate).

An admin reads every embedded base, a tenant's key only its tenant's: a base may be shared by
tenants, so changing one stays with the admin endpoints of `agent.api.documents`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from agent.api.deps import AppRuntime, PrincipalDep, RuntimeDep, check_length
from agent.api.documents import document_json
from agent.context import Context
from agent.gateway import Refusal
from agent.policy.tenants import Principal
from tools.base import KnowledgeUnavailable, Passage, statistics
from tools.kb import knowledge_base_names
from tools.rerank import select_evidence

router = APIRouter(prefix="/v1/kb", tags=["knowledge"])


class HitTest(BaseModel):
    question: str = Field(min_length=1)


async def _readable(rt: AppRuntime, principal: Principal) -> list[str]:
    if not principal.is_admin:
        tenant = rt.gateway.tenants.tenant(principal.tenant)
        return list(tenant.knowledge_bases) if tenant else [rt.settings.kb_name]
    held = await asyncio.to_thread(knowledge_base_names, rt.settings.kb_path)
    # Bases tenants are given but nothing was uploaded to yet: the admin's first upload goes there.
    given = {kb for tenant in rt.gateway.tenants.list_tenants() for kb in tenant.knowledge_bases}
    return sorted({rt.settings.kb_name, *held, *given})


async def _check(rt: AppRuntime, principal: Principal, kb: str) -> None:
    # 404, not 403: another tenant's base is no business of this key, not even its existence.
    if not principal.is_admin and kb not in await _readable(rt, principal):
        raise Refusal(404, "kb_not_found", f"租户 {principal.tenant} 没有知识库 {kb}")


@router.get("")
async def list_readable(rt: RuntimeDep, principal: PrincipalDep) -> dict[str, Any]:
    """The knowledge bases this key may read; `writable` when it may upload and remove too."""
    return {"knowledge_bases": await _readable(rt, principal), "writable": principal.is_admin}


@router.get("/{kb}/documents")
async def list_documents(kb: str, rt: RuntimeDep, principal: PrincipalDep) -> dict[str, Any]:
    await _check(rt, principal, kb)
    documents = await asyncio.to_thread(rt.services.embedded_kb(kb).sources)
    return {"kb": kb, "documents": [document_json(info) for info in documents]}


@router.get("/{kb}/documents/{document}")
async def get_document(
    kb: str, document: str, rt: RuntimeDep, principal: PrincipalDep
) -> dict[str, Any]:
    """A document and its passages in document order."""
    await _check(rt, principal, kb)
    base = rt.services.embedded_kb(kb)
    info = await asyncio.to_thread(base.document, document)
    if info is None:
        raise Refusal(404, "document_not_found", f"知识库 {kb} 里没有文档 {document}")
    passages = await asyncio.to_thread(base.passages_of, info.source)
    return {
        "kb": kb,
        "document": document_json(info),
        "passages": [{"id": p["id"], "title": p["title"], "text": p["text"]} for p in passages],
    }


def _hit(passage: Passage) -> dict[str, Any]:
    return {
        "id": passage["id"],
        "title": passage["title"],
        "source": passage["source"],
        "text": passage["text"],
        "score": passage["score"],
    }


@router.post("/{kb}/search")
async def hit_test(
    kb: str, body: HitTest, rt: RuntimeDep, principal: PrincipalDep
) -> dict[str, Any]:
    """The question searched in `kb` with the default profile's settings, as a turn's retrieve
    and rerank nodes would: every candidate, its relevance, and whether the gate lets it in."""
    check_length(body.question, rt.settings, "question")
    await _check(rt, principal, kb)
    book = rt.gateway.gray.book
    ctx = book.assignment(book.default).apply(Context())
    knowledge = await rt.services.knowledge_for([kb])
    try:
        candidates = await knowledge.search(body.question, ctx.top_k)
    except KnowledgeUnavailable as exc:
        raise Refusal(503, "knowledge_unavailable", f"知识库检索失败：{exc}") from None
    reranker = rt.services.reranker(ctx.reranker)
    ranked = await reranker.rerank(body.question, candidates, statistics(knowledge))
    evidence = select_evidence(
        ranked, ctx.rerank_top_n, ctx.relevance_threshold, ctx.evidence_ratio
    )
    best = max((p["score"] for p in ranked), default=0.0)
    chosen = {p["id"] for p in evidence}
    return {
        "kb": kb,
        "question": body.question,
        "reranker": ctx.reranker,
        "top_k": ctx.top_k,
        "rerank_top_n": ctx.rerank_top_n,
        "relevance_threshold": ctx.relevance_threshold,
        "evidence_ratio": ctx.evidence_ratio,
        "floor": max(ctx.relevance_threshold, ctx.evidence_ratio * best),
        "answered": bool(evidence),
        "candidates": [_hit(p) for p in candidates],
        "ranked": [{**_hit(p), "evidence": p["id"] in chosen} for p in ranked],
    }
