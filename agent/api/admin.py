"""`/v1/audit` (the caller's turns), `/v1/feedback` (ratings and comments), `/v1/admin/gaps`
(what the knowledge base is missing) and `/v1/admin/actions` (what administrators removed or
changed)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query

from agent.api.deps import AdminDep, PrincipalDep, RuntimeDep
from agent.audit import AuditLog

router = APIRouter(prefix="/v1", tags=["audit"])


async def _read(audit: AuditLog | None, query: Callable[[AuditLog], list[Any]]) -> list[Any]:
    """Rows from the audit log off the event loop (a read may scan many rows); none without one."""
    return await asyncio.to_thread(query, audit) if audit is not None else []


@router.get("/audit")
async def get_audit(
    rt: RuntimeDep,
    principal: PrincipalDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    tenant: str | None = None,
    thread_id: str | None = None,
    intent: Literal["knowledge", "chitchat", "command", "blocked"] | None = None,
    degraded: bool | None = None,
    q: Annotated[str | None, Query(max_length=200)] = None,
) -> dict[str, Any]:
    """The caller's own turns; an admin may read any tenant's (or all, without `tenant`).
    Filters: one conversation, an intent, degraded or not, text in the question, the answer
    or the conversation id."""
    scope = tenant if principal.is_admin else principal.tenant
    turns = await _read(
        rt.services.audit,
        lambda log: log.turns(
            scope, thread_id=thread_id, intent=intent, degraded=degraded, text=q, limit=limit
        ),
    )
    return {"turns": turns}


@router.get("/feedback")
async def get_feedback(
    rt: RuntimeDep,
    principal: PrincipalDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    tenant: str | None = None,
) -> dict[str, Any]:
    """Ratings and comments given with /反馈 (or POST /v1/feedback), newest first; scoped to
    tenants as /v1/audit is."""
    scope = tenant if principal.is_admin else principal.tenant
    rows = await _read(rt.services.audit, lambda log: log.recent_feedback(scope, limit=limit))
    return {"feedback": rows}


@router.get("/admin/gaps")
async def get_gaps(
    rt: RuntimeDep,
    principal: AdminDep,
    days: Annotated[int, Query(ge=1, le=365)] = 7,
    tenant: str | None = None,
) -> dict[str, Any]:
    """Questions answered with "not found": what the knowledge base is missing."""
    gaps = await _read(rt.services.audit, lambda log: log.gaps(tenant, days=days))
    return {"days": days, "gaps": gaps}


@router.get("/admin/actions")
async def get_actions(
    rt: RuntimeDep,
    principal: AdminDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> dict[str, Any]:
    """Documents uploaded or removed, tenants removed, keys revoked or rotated: who, what, when."""
    return {"actions": await _read(rt.services.audit, lambda log: log.actions(limit=limit))}
