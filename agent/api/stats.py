"""`/v1/stats`: turns, latency, refusals, degraded share and tokens over the last hours, per
bucket of minutes, from the audit log (the console's status charts read it)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query

from agent.activity import Bucket, buckets, total, window_start
from agent.api.deps import PrincipalDep, RuntimeDep

router = APIRouter(prefix="/v1", tags=["audit"])


def _totals(series: list[Bucket], minutes: int) -> dict[str, Any]:
    whole = total(series)
    return {
        "turns": whole.turns,
        "turns_per_minute": round(whole.turns / minutes, 3),
        "degraded_share": round(whole.degraded / whole.turns, 4) if whole.turns else 0.0,
        "failed": whole.failed,
        "mean_seconds": round(whole.mean_seconds, 4),
        "max_seconds": whole.max_seconds,
        "tokens": whole.tokens,
        "busy": whole.busy,
        "quota": whole.quota,
    }


@router.get("/stats")
async def get_stats(
    rt: RuntimeDep,
    principal: PrincipalDep,
    hours: Annotated[int, Query(ge=1, le=48)] = 3,
    bucket: Annotated[int, Query(ge=1, le=60, description="minutes per bucket")] = 5,
    tenant: str | None = None,
) -> dict[str, Any]:
    """The caller's tenant's activity; an admin may read any tenant's (or all, without
    `tenant`)."""
    scope = tenant if principal.is_admin else principal.tenant
    now = datetime.now(UTC)
    start = window_start(now, hours, bucket)
    audit = rt.services.audit
    minutes = await asyncio.to_thread(audit.minutes, scope, start) if audit is not None else []
    series = buckets(minutes, start=start, now=now, bucket_minutes=bucket)
    return {
        "tenant": scope,
        "hours": hours,
        "bucket_minutes": bucket,
        "totals": _totals(series, hours * 60),
        "buckets": [b.as_json() for b in series],
    }
