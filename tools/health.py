"""How a dependency is doing, as data: `/readyz`, `qqrag doctor` and `/metrics` read the same.

Every dependency object (knowledge backend, checkpointer, shared-state store, model server)
answers `async def health(self) -> Health`; nobody decides readiness by reading a message.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

Status = Literal["ok", "degraded", "down"]


@dataclass(frozen=True)
class Health:
    ok: bool
    """Working as configured."""
    serving: bool
    """Turns can still be answered through it, perhaps degraded (a fallback stands in)."""
    message: str = ""
    """For operators, in Chinese: what is wrong, or what is fine."""
    fix: str = ""
    """For operators, in Chinese: what to do about it; empty when nothing is to be done."""
    misconfigured: bool = False
    """Down because a setting is wrong, not for a passing outage: no fallback may hide it,
    since it would hide it for good."""

    @classmethod
    def up(cls, message: str = "") -> Health:
        return cls(ok=True, serving=True, message=message)

    @classmethod
    def degraded(cls, message: str, fix: str = "") -> Health:
        """Not working as configured, but turns are still answered (by a fallback)."""
        return cls(ok=False, serving=True, message=message, fix=fix)

    @classmethod
    def down(cls, message: str, fix: str = "", *, misconfigured: bool = False) -> Health:
        """Turns that need it fail."""
        return cls(ok=False, serving=False, message=message, fix=fix, misconfigured=misconfigured)

    @property
    def status(self) -> Status:
        if self.ok:
            return "ok"
        return "degraded" if self.serving else "down"

    def as_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"ok": self.ok, "status": self.status}
        if self.message:
            data["message" if self.ok else "error"] = self.message
        if self.fix:
            data["fix"] = self.fix
        return data


class HasHealth(Protocol):
    async def health(self) -> Health: ...


def overall(checks: Mapping[str, Health]) -> Status:
    """down when any dependency cannot serve, degraded when any is not ok, else ok."""
    if not all(check.serving for check in checks.values()):
        return "down"
    return "ok" if all(check.ok for check in checks.values()) else "degraded"
