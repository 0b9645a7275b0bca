"""The FastAPI dependencies routes declare: the app's runtime, the caller, an admin caller."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Annotated, Any

import httpx
from fastapi import Depends, Header, HTTPException, Request

from agent.checkpoints import Checkpointer, checkpointer_health
from agent.gateway import Gateway, Refusal
from agent.health import (
    Checks,
    LatestChecks,
    ollama_health,
    probe_ollama,
    serving_models,
)
from agent.policy.tenants import Principal
from agent.services import Services
from agent.settings import Settings
from agent.storage import storage_health


@dataclass
class AppRuntime:
    """What the lifespan opened, for the routes: one per app."""

    settings: Settings
    services: Services
    saver: Checkpointer
    gateway: Gateway
    http: httpx.AsyncClient
    health: LatestChecks = field(init=False)

    def __post_init__(self) -> None:
        self.health = LatestChecks(self.check_dependencies)

    async def check_dependencies(self) -> Checks:
        """Every dependency's Health, probed together; the metrics gauges follow."""
        settings = self.settings
        saver, storage, knowledge, ollama = await asyncio.gather(
            checkpointer_health(self.saver),
            storage_health(settings.data_dir, settings.min_free_mb),
            self.services.knowledge.health(),
            probe_ollama(self.http, settings.ollama_url),
        )
        if ollama.error:
            self.gateway.count_outage("ollama")
        checks = {
            settings.checkpointer: saver,
            # Quotas, audit, the embedded knowledge base and SQLite checkpoints live there.
            "storage": storage,
            "knowledge": knowledge,
            "ollama": ollama_health(ollama, serving_models(settings)),
        }
        # Turns go on without Redis (quotas unchecked, locks per process): degraded, not down.
        if (shared := await self.gateway.shared_state_health()) is not None:
            checks["redis"] = shared
        self.gateway.metrics.record_health(checks)
        return checks


# Dependencies are `async def` although they never await: FastAPI runs a plain `def` dependency
# in a worker thread, a hand-off that costs more than the dependency itself.
async def get_runtime(request: Request) -> AppRuntime:
    runtime: AppRuntime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[AppRuntime, Depends(get_runtime)]


async def get_principal(
    rt: RuntimeDep, authorization: Annotated[str | None, Header()] = None
) -> Principal:
    return rt.gateway.authenticate(authorization)


PrincipalDep = Annotated[Principal, Depends(get_principal)]


async def require_admin(principal: PrincipalDep) -> Principal:
    if not principal.is_admin:
        raise Refusal(403, "forbidden", "需要管理员密钥")
    return principal


AdminDep = Annotated[Principal, Depends(require_admin)]


async def record_action(
    rt: AppRuntime,
    principal: Principal,
    action: str,
    target: str,
    *,
    kb: str | None = None,
    detail: dict[str, Any],
) -> None:
    """An admin action taken over HTTP, in the audit log (when there is one), off the loop."""
    if rt.services.audit is not None:
        await asyncio.to_thread(
            rt.services.audit.record_action,
            via="http",
            actor=principal.key_id,
            actor_tenant=principal.tenant,
            action=action,
            target=target,
            kb=kb,
            detail=detail,
        )


def check_length(text: str, settings: Settings, name: str = "text") -> None:
    """422 when `text` (the request field `name`) is longer than a question may be."""
    if len(text) > settings.max_text_chars:
        raise HTTPException(
            422, f"{name} 超过 {settings.max_text_chars} 字的上限（{len(text)} 字）"
        )
