"""`/v1/me`: whom the caller's key acts for, so a client (the console) knows what it may do."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from agent.api.deps import PrincipalDep, RuntimeDep

router = APIRouter(prefix="/v1", tags=["auth"])


@router.get("/me")
async def get_me(rt: RuntimeDep, principal: PrincipalDep) -> dict[str, Any]:
    """The key's tenant and role; `open` while no key exists and anyone may call."""
    return {
        "tenant": principal.tenant,
        "role": principal.role,
        "key_id": principal.key_id,
        "open": rt.gateway.tenants.is_open(),
    }
