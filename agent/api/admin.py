"""`/v1/audit` (the caller's turns) and `/v1/admin/gaps` (what the knowledge base is missing)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Query

from agent.api.deps import AdminDep, PrincipalDep, RuntimeDep

router = APIRouter(prefix="/v1", tags=["audit"])


@router.get("/audit")
async def get_audit(
    rt: RuntimeDep,
    principal: PrincipalDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    tenant: str | None = None,
) -> dict[str, Any]:
    """The caller's own turns; an admin may read any tenant's (or all, without `tenant`)."""
    scope = tenant if principal.is_admin else principal.tenant
    rows = (
        await asyncio.to_thread(rt.services.audit.turns, scope, limit=limit)
        if rt.services.audit
        else []
    )
    return {"turns": rows}


@router.get("/admin/gaps")
async def get_gaps(
    rt: RuntimeDep,
    principal: AdminDep,
    days: Annotated[int, Query(ge=1, le=365)] = 7,
    tenant: str | None = None,
) -> dict[str, Any]:
    """Questions answered with "not found": what the knowledge base is missing."""
    rows = (
        await asyncio.to_thread(rt.services.audit.gaps, tenant, days=days)
        if rt.services.audit
        else []
    )
    return {"days": days, "gaps": rows}
