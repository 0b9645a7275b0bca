"""`/v1/admin/profiles`: gray release's profiles, the rules that split traffic between them, and
which one answers when no rule matches."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from agent.api.deps import AdminDep, RuntimeDep

router = APIRouter(prefix="/v1/admin", tags=["profiles"])


@router.get("/profiles")
async def get_profiles(rt: RuntimeDep, principal: AdminDep) -> dict[str, Any]:
    book = rt.gateway.gray.book
    profiles = [
        {
            "name": profile.name,
            "overrides": dict(profile.context_overrides),
            "knowledge_bases": (
                None if profile.knowledge_bases is None else list(profile.knowledge_bases)
            ),
        }
        for profile in book.profiles.values()
    ]
    rules = [
        {
            "profile": rule.profile,
            "tenant": rule.tenant,
            "group_ids": None if rule.group_ids is None else sorted(rule.group_ids),
            "user_ids": None if rule.user_ids is None else sorted(rule.user_ids),
            "percent": rule.percent,
        }
        for rule in book.rules
    ]
    return {"default": book.default, "profiles": profiles, "rules": rules}
