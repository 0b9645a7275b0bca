"""`/v1/admin/tenants`, `/v1/admin/keys`, `/v1/admin/limits` and `/v1/admin/safety`: tenants
and their keys (issued and revoked over HTTP as with `qqrag key`), the quotas and in-flight
bound in effect, and how often each sensitive-word list is hit. Admin keys only; issuing and
revoking are written to the audit log's admin actions."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from agent.api.deps import AdminDep, AppRuntime, RuntimeDep, record_action
from agent.gateway import Refusal
from agent.policy.tenants import KEY_ID_CHARS, KeyInfo, Principal, Role, hash_key

router = APIRouter(prefix="/v1/admin", tags=["governance"])
log = logging.getLogger(__name__)


class NewKey(BaseModel):
    role: Role = "client"
    label: str = Field(default="", max_length=100)


def _key(info: KeyInfo) -> dict[str, Any]:
    return {
        "key_id": info.key_id,
        "tenant": info.tenant,
        "role": info.role,
        "label": info.label,
        "created_at": info.created_at,
        "revoked_at": info.revoked_at,
    }


async def _record(
    rt: AppRuntime, principal: Principal, action: str, info: KeyInfo, **detail: Any
) -> None:
    await record_action(
        rt, principal, action, info.key_id, detail={"tenant": info.tenant, **detail}
    )


@router.get("/tenants")
async def list_tenants(rt: RuntimeDep, principal: AdminDep) -> dict[str, Any]:
    """Every tenant with its knowledge bases, link domains and keys (ids, never secrets)."""
    store = rt.gateway.tenants
    tenants, keys = await asyncio.to_thread(lambda: (store.list_tenants(), store.list_keys()))
    return {
        "tenants": [
            {
                "name": tenant.name,
                "knowledge_bases": list(tenant.knowledge_bases),
                "link_domains": list(tenant.link_domains),
                "created_at": tenant.created_at,
                "keys": [_key(key) for key in keys if key.tenant == tenant.name],
            }
            for tenant in tenants
        ]
    }


@router.post("/tenants/{tenant}/keys")
async def issue_key(tenant: str, body: NewKey, rt: RuntimeDep, principal: AdminDep) -> JSONResponse:
    """A new key for `tenant`: the secret is in this response only, never stored."""
    store = rt.gateway.tenants
    if await asyncio.to_thread(store.tenant, tenant) is None:
        raise Refusal(404, "tenant_not_found", f"没有租户 {tenant}")
    secret = await asyncio.to_thread(store.issue_key, tenant, body.role, body.label)
    key_id = hash_key(secret)[:KEY_ID_CHARS]
    keys = await asyncio.to_thread(store.list_keys, tenant)
    info = next(key for key in keys if key.key_id == key_id)
    await _record(rt, principal, "key.issue", info, role=info.role)
    return JSONResponse({"key": secret, "issued": _key(info)}, status_code=201)


@router.delete("/keys/{key_id}")
async def revoke_key(key_id: str, rt: RuntimeDep, principal: AdminDep) -> dict[str, Any]:
    """Revoke a key by its id (6+ characters of it), at once."""
    try:
        revoked = await asyncio.to_thread(rt.gateway.tenants.revoke_key, key_id)
    except ValueError:
        raise Refusal(
            422,
            "invalid_request",
            f"{key_id}：请给出密钥 ID 的前 6 位以上（十六进制），且只对应一个密钥",
        ) from None
    if revoked is None:
        raise Refusal(404, "key_not_found", f"没有有效的密钥 {key_id}（不存在或已吊销）")
    await _record(rt, principal, "key.revoke", revoked)
    return {"revoked": _key(revoked)}


@router.get("/limits")
async def get_limits(rt: RuntimeDep, principal: AdminDep) -> dict[str, Any]:
    """The quotas and the in-flight bound this service enforces (0: unlimited), and the turns
    in flight now (null when the shared store cannot say: /readyz tells why)."""
    settings = rt.settings
    admission = rt.gateway.admission
    try:
        in_flight: int | None = await asyncio.to_thread(lambda: admission.in_flight)
    except Exception as exc:  # Redis out: the limits are still worth showing.
        log.warning("in-flight count unavailable: %s", exc)
        in_flight = None
    return {
        "user_rpm": settings.quota_user_rpm,
        "group_rpm": settings.quota_group_rpm,
        "user_daily_tokens": settings.quota_user_daily_tokens,
        "group_daily_tokens": settings.quota_group_daily_tokens,
        "max_inflight_turns": settings.max_inflight_turns,
        "max_waiting_per_conversation": settings.max_waiting_per_conversation,
        "turn_deadline": settings.turn_deadline,
        "shared_state": settings.shared_state,
        "in_flight": in_flight,
    }


@router.get("/safety")
async def get_safety(
    rt: RuntimeDep, principal: AdminDep, days: Annotated[int, Query(ge=1, le=365)] = 7
) -> dict[str, Any]:
    """Each sensitive-word list (category) and its hits in questions and answers."""
    categories = rt.gateway.safety.words.categories
    audit = rt.services.audit
    hits = await asyncio.to_thread(audit.safety_hits, days=days) if audit is not None else {}
    return {
        "days": days,
        "categories": [
            {
                "category": name,
                "question_hits": hits.get(name, {}).get("question", 0),
                "answer_hits": hits.get(name, {}).get("answer", 0),
            }
            for name in sorted({*categories, *hits})
        ],
    }
