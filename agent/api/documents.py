"""`/v1/admin/kb`: the embedded knowledge bases and their documents, listed, uploaded and
removed with an admin key; every upload and removal is written to the audit log."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, UploadFile
from fastapi.responses import JSONResponse

from agent.api.deps import AdminDep, AppRuntime, RuntimeDep, record_action
from agent.gateway import Refusal
from agent.policy.tenants import Principal
from tools.ingest import SUPPORTED_SUFFIXES, IngestError
from tools.kb import UPLOAD_PREFIX, DocumentConflict, SourceInfo, knowledge_base_names

router = APIRouter(prefix="/v1/admin/kb", tags=["knowledge"])

MAX_UPLOAD_MB = 50
"""An upload is read whole before it is parsed: room for a long PDF manual, not for a request
that would fill the memory."""


def document_json(info: SourceInfo) -> dict[str, Any]:
    return {
        "id": info.document_id,
        "source": info.source,
        "origin": info.origin,
        "passages": info.passages,
        "sha256": info.sha256,
        "ingested_at": info.ingested_at,
    }


async def _record(
    rt: AppRuntime, principal: Principal, action: str, kb: str, info: SourceInfo, **detail: Any
) -> None:
    await record_action(
        rt,
        principal,
        action,
        info.source,
        kb=kb,
        detail={"document_id": info.document_id, **detail},
    )


@router.get("")
async def list_knowledge_bases(rt: RuntimeDep, principal: AdminDep) -> dict[str, Any]:
    """The names of the embedded knowledge bases that hold documents."""
    names = await asyncio.to_thread(knowledge_base_names, rt.settings.kb_path)
    return {"knowledge_bases": names}


@router.get("/{kb}/documents")
async def list_documents(kb: str, rt: RuntimeDep, principal: AdminDep) -> dict[str, Any]:
    """A knowledge base's documents by source name (none for a name that holds nothing)."""
    documents = await asyncio.to_thread(rt.services.embedded_kb(kb).sources)
    return {"kb": kb, "documents": [document_json(info) for info in documents]}


@router.post("/{kb}/documents")
async def uploaddocument_json(
    kb: str, file: UploadFile, rt: RuntimeDep, principal: AdminDep
) -> JSONResponse:
    """Add a document, or replace the one uploaded earlier under the same file name."""
    name = file.filename or ""
    data = await file.read(MAX_UPLOAD_MB * 1024 * 1024 + 1)
    if len(data) > MAX_UPLOAD_MB * 1024 * 1024:
        raise Refusal(
            413,
            "too_large",
            f"{name} 超过 {MAX_UPLOAD_MB} MB：拆成几个文件上传，或在服务器上用 qqrag kb add 导入",
        )
    base = rt.services.embedded_kb(kb)
    try:
        info, report = await asyncio.to_thread(base.add_upload, name, data)
    except DocumentConflict as exc:
        existing = exc.existing
        where = existing.origin or "升级前导入，没有记下原文件"
        raise Refusal(
            409,
            "document_exists",
            f"知识库 {kb} 里已有同名文档 {existing.source}（{where.removeprefix(UPLOAD_PREFIX)}），"
            f"不是上传的那个文件；先删除它（DELETE /v1/admin/kb/{kb}/documents/"
            f"{existing.document_id}），或换个文件名再上传",
        ) from None
    except IngestError as exc:
        formats = "、".join(sorted(SUPPORTED_SUFFIXES))
        raise Refusal(
            422, "unreadable_document", f"{name}：{exc}（可以上传 {formats} 文件）"
        ) from None
    result = "added" if report.added_files else "replaced" if report.replaced_files else "unchanged"
    if result != "unchanged":
        await _record(
            rt,
            principal,
            "document.upload",
            kb,
            info,
            result=result,
            passages_added=report.passages_added,
            passages_removed=report.passages_removed,
        )
    body = {
        "kb": kb,
        "result": result,
        "document": document_json(info),
        "passages_added": report.passages_added,
        "passages_removed": report.passages_removed,
        "vectors_error": report.vectors_error,
    }
    return JSONResponse(body, status_code=201 if result == "added" else 200)


@router.delete("/{kb}/documents/{document}")
async def removedocument_json(
    kb: str, document: str, rt: RuntimeDep, principal: AdminDep
) -> dict[str, Any]:
    """Remove a document (by its id, or a source name without slashes) and all its passages."""
    base = rt.services.embedded_kb(kb)
    info = await asyncio.to_thread(base.document, document)
    if info is None:
        raise Refusal(404, "document_not_found", f"知识库 {kb} 里没有文档 {document}")
    removed = await asyncio.to_thread(base.remove_source, info.source)
    await _record(rt, principal, "document.remove", kb, info, passages=removed, origin=info.origin)
    return {"kb": kb, "removed": document_json(info), "passages_removed": removed}
