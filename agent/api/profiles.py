"""`/v1/admin/profiles`: gray release's profiles and which one answers when no rule matches."""

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
    return {"default": book.default, "profiles": profiles}
