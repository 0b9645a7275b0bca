"""`/healthz` (the process runs), `/readyz` (its dependencies) and `/metrics` (Prometheus).

/readyz and /metrics read the same Health (`AppRuntime.check_dependencies`): /readyz probes
afresh, /metrics reuses a check younger than `agent.health.METRICS_MAX_AGE_S`.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from agent.api.deps import RuntimeDep
from tools.health import overall

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/metrics")
async def metrics(rt: RuntimeDep) -> Response:
    await rt.health.recent()
    body, content_type = rt.gateway.metrics.render()
    return Response(body, media_type=content_type)


@router.get("/readyz")
async def readyz(rt: RuntimeDep) -> JSONResponse:
    checks = await rt.health.fresh()
    status = overall(checks)
    body = {"status": status, "checks": {name: check.as_json() for name, check in checks.items()}}
    return JSONResponse(body, status_code=503 if status == "down" else 200)
