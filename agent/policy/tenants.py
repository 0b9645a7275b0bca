"""Tenants and their API keys, kept in SQLite; a key's secret is shown once and stored hashed."""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, NamedTuple, cast, get_args

import sqlite_utils

from agent.links import allowed_domain

Role = Literal["client", "admin"]
KEY_PREFIX = "qqrag-"
KEY_ID_CHARS = 12
OPEN_TENANT = "default"

_TENANT_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# token_urlsafe(24) is 32 characters of the URL-safe base64 alphabet: 192 random bits.
_KEY_SHAPE = re.compile(rf"{KEY_PREFIX}[A-Za-z0-9_-]{{32}}")
_MIN_PREFIX = 6


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request acts for."""

    tenant: str
    role: Role
    key_id: str
    """The first characters of the key's hash: safe to log and to show in admin lists."""

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


OPEN_PRINCIPAL = Principal(tenant=OPEN_TENANT, role="admin", key_id="open")
"""Whom the service acts for while no key exists (`TenantStore.is_open`): development mode."""


@dataclass(frozen=True, slots=True)
class Tenant:
    name: str
    knowledge_bases: tuple[str, ...]
    created_at: str
    link_domains: tuple[str, ...] = ()
    """Domains whose links this tenant's answers may show, besides QQRAG_LINK_ALLOWLIST's."""


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """A key as listed to admins: never the secret."""

    key_id: str
    tenant: str
    role: Role
    label: str
    created_at: str
    revoked_at: str | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


class Rotation(NamedTuple):
    old: KeyInfo
    """Revoked by the rotation."""
    new: KeyInfo
    secret: str
    """The new key itself: shown once, never stored."""


def hash_key(key: str) -> str:
    # A key carries 192 random bits, so a plain SHA-256 cannot be reversed by guessing:
    # salts, peppers and slow hashes defend low-entropy passwords, which these are not.
    return hashlib.sha256(key.encode()).hexdigest()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class TenantStore:
    """Tenants and API keys in one SQLite file; safe to share between threads and processes."""

    def __init__(self, path: Path | str) -> None:
        self._db = sqlite_utils.Database(sqlite3.connect(path, check_same_thread=False, timeout=10))
        self._db.conn.execute("PRAGMA journal_mode=WAL")
        self._db.conn.execute("PRAGMA synchronous=NORMAL")
        self._lock = threading.Lock()
        self._tenants = self._db.table("tenants")
        self._tenants.create(
            {"name": str, "knowledge_bases": str, "created_at": str, "link_domains": str},
            pk="name",
            not_null={"link_domains"},
            defaults={"link_domains": "[]"},
            if_not_exists=True,
        )
        self._add_link_domains()
        self._keys = self._db.table("keys")
        self._keys.create(
            {
                "key_hash": str,
                "tenant": str,
                "role": str,
                "label": str,
                "created_at": str,
                "revoked_at": str,
            },
            pk="key_hash",
            not_null={"tenant", "role", "created_at"},
            foreign_keys=[("tenant", "tenants", "name")],
            if_not_exists=True,
        )
        self._keys.create_index(["tenant"], if_not_exists=True)

    def _add_link_domains(self) -> None:
        """Give a tenants table from before link allow-lists its column (every tenant without
        link domains of its own)."""
        if "link_domains" in self._tenants.columns_dict:
            return
        try:
            self._tenants.add_column("link_domains", str, not_null_default="[]")
        except sqlite3.OperationalError:
            # Another process opening the same file added it first.
            if "link_domains" not in self._tenants.columns_dict:
                raise

    def create_tenant(
        self,
        name: str,
        knowledge_bases: Iterable[str] = ("default",),
        link_domains: Iterable[str] = (),
    ) -> Tenant:
        """Add a tenant; `ValueError` for a malformed or existing name, no knowledge base or a
        malformed link domain."""
        if not _TENANT_NAME.fullmatch(name):
            raise ValueError(f"tenant name {name!r}: use 1-64 of A-Z a-z 0-9 _ . -")
        bases = _knowledge_bases(name, knowledge_bases)
        row = {
            "name": name,
            "knowledge_bases": json.dumps(bases),
            "created_at": _now(),
            "link_domains": json.dumps(_link_domains(link_domains)),
        }
        try:
            with self._lock:
                self._tenants.insert(row)
        except sqlite3.IntegrityError:
            raise ValueError(f"tenant {name!r} already exists") from None
        return _tenant(row)

    def set_knowledge_bases(self, name: str, knowledge_bases: Iterable[str]) -> Tenant:
        """Replace which knowledge bases a tenant may search; `KeyError` for an unknown tenant."""
        bases = _knowledge_bases(name, knowledge_bases)
        with self._lock:
            if not self._tenants.count_where("name = ?", [name]):
                raise KeyError(f"unknown tenant {name!r}")
            self._tenants.update(name, {"knowledge_bases": json.dumps(bases)})
            return _tenant(self._tenants.get(name))

    def set_link_domains(self, name: str, link_domains: Iterable[str]) -> Tenant:
        """Replace the domains whose links a tenant's answers may show (none: every link is
        hidden, but QQRAG_LINK_ALLOWLIST's); `KeyError` for an unknown tenant, `ValueError`
        for a malformed domain."""
        domains = _link_domains(link_domains)
        with self._lock:
            if not self._tenants.count_where("name = ?", [name]):
                raise KeyError(f"unknown tenant {name!r}")
            self._tenants.update(name, {"link_domains": json.dumps(domains)})
            return _tenant(self._tenants.get(name))

    def tenant(self, name: str) -> Tenant | None:
        row = self._first("SELECT * FROM tenants WHERE name = ?", name)
        return _tenant(row) if row else None

    def list_tenants(self) -> list[Tenant]:
        with self._lock:
            return [_tenant(row) for row in self._tenants.rows_where(order_by="name")]

    def issue_key(self, tenant: str, role: Role = "client", label: str = "") -> str:
        """Create a key and return its secret: the only time it can be seen."""
        if role not in get_args(Role):
            raise ValueError(f"role {role!r}: use one of {get_args(Role)}")
        key = KEY_PREFIX + secrets.token_urlsafe(24)
        row = {
            "key_hash": hash_key(key),
            "tenant": tenant,
            "role": role,
            "label": label,
            "created_at": _now(),
            "revoked_at": None,
        }
        with self._lock:
            if not self._tenants.count_where("name = ?", [tenant]):
                raise KeyError(f"unknown tenant {tenant!r}")
            self._keys.insert(row)
        return key

    def revoke_key(self, key_or_prefix: str) -> KeyInfo | None:
        """Revoke a key given its secret or a prefix (6+ characters) of its key id.

        Returns the revoked key, or None when no active key matches; `ValueError` when a
        prefix is too short or matches several active keys.
        """
        with self._lock:
            row = self._active_key(key_or_prefix)
            if row is None:
                return None
            row = {**row, "revoked_at": _now()}
            self._keys.update(row["key_hash"], {"revoked_at": row["revoked_at"]})
        return _key_info(row)

    def rotate_key(self, key_or_prefix: str) -> Rotation | None:
        """Replace an active key (given as for `revoke_key`) by a new one of the same tenant,
        role and label, in one transaction. None when no active key matches."""
        key = KEY_PREFIX + secrets.token_urlsafe(24)
        now = _now()
        with self._lock:
            row = self._active_key(key_or_prefix)
            if row is None:
                return None
            # Both or neither: a rotation must never leave the tenant with two keys or none.
            with self._db.conn:
                self._db.conn.execute(
                    "UPDATE keys SET revoked_at = ? WHERE key_hash = ?", (now, row["key_hash"])
                )
                self._db.conn.execute(
                    "INSERT INTO keys (key_hash, tenant, role, label, created_at, revoked_at)"
                    " VALUES (?, ?, ?, ?, ?, NULL)",
                    (hash_key(key), row["tenant"], row["role"], row["label"], now),
                )
        new = {**row, "key_hash": hash_key(key), "created_at": now, "revoked_at": None}
        return Rotation(_key_info({**row, "revoked_at": now}), _key_info(new), key)

    def remove_tenant(self, name: str) -> list[KeyInfo]:
        """Delete a tenant and revoke its active keys, returned as revoked; `KeyError` for an
        unknown tenant.

        The keys stay listed, revoked: a service whose last tenant went does not fall back into
        open mode (`is_open`).
        """
        now = _now()
        with self._lock:
            if not self._tenants.count_where("name = ?", [name]):
                raise KeyError(f"unknown tenant {name!r}")
            active = list(self._keys.rows_where("tenant = ? AND revoked_at IS NULL", [name]))
            with self._db.conn:
                self._db.conn.execute(
                    "UPDATE keys SET revoked_at = ? WHERE tenant = ? AND revoked_at IS NULL",
                    (now, name),
                )
                self._db.conn.execute("DELETE FROM tenants WHERE name = ?", (name,))
        return [_key_info({**row, "revoked_at": now}) for row in active]

    def _active_key(self, key_or_prefix: str) -> dict[str, Any] | None:
        """The one active key row given by its secret or a key id prefix; the lock is held."""
        if key_or_prefix.startswith(KEY_PREFIX):
            where, args = "key_hash = ?", [hash_key(key_or_prefix)]
        elif len(key_or_prefix) >= _MIN_PREFIX and re.fullmatch(r"[0-9a-f]+", key_or_prefix):
            where, args = "key_hash LIKE ?", [key_or_prefix + "%"]
        else:
            raise ValueError(f"give the key itself or {_MIN_PREFIX}+ hex characters of its id")
        rows = list(self._keys.rows_where(f"{where} AND revoked_at IS NULL", args))
        if len(rows) > 1:
            raise ValueError(f"{key_or_prefix!r} matches {len(rows)} keys; give more of it")
        return rows[0] if rows else None

    def authenticate(self, bearer: str | None) -> Principal | None:
        """The principal of an active key, or None; accepts the key or "Bearer <key>"."""
        if not bearer:
            return None
        scheme, _, token = bearer.strip().partition(" ")
        key = token.strip() if scheme.lower() == "bearer" else bearer.strip()
        if not _KEY_SHAPE.fullmatch(key):
            return None
        # The lookup is by hash, so timing reveals nothing about the secret.
        row = self._first(
            "SELECT * FROM keys WHERE key_hash = ? AND revoked_at IS NULL", hash_key(key)
        )
        if row is None:
            return None
        info = _key_info(row)
        return Principal(tenant=info.tenant, role=info.role, key_id=info.key_id)

    def list_keys(self, tenant: str | None = None) -> list[KeyInfo]:
        where, args = ("tenant = ?", [tenant]) if tenant else (None, None)
        with self._lock:
            rows = list(self._keys.rows_where(where, args, order_by="created_at, key_hash"))
        return [_key_info(row) for row in rows]

    def is_open(self) -> bool:
        """True while no key was ever issued: a fresh install serves everyone as `OPEN_PRINCIPAL`.

        Revoked keys count, so revoking the last key locks the service rather than opening it.
        """
        return self._first("SELECT 1 FROM keys LIMIT 1") is None

    def _first(self, sql: str, *args: Any) -> dict[str, Any] | None:
        """One row by plain SQL: these lookups run on every request, and sqlite-utils' table
        helpers re-read the schema each time."""
        with self._lock:
            cursor = self._db.conn.execute(sql, args)
            row = cursor.fetchone()
            if row is None:
                return None
            return dict(zip([d[0] for d in cursor.description], row, strict=True))

    def close(self) -> None:
        self._db.close()


def _knowledge_bases(tenant: str, names: Iterable[str]) -> list[str]:
    bases = list(dict.fromkeys(names))
    if not bases or not all(isinstance(name, str) and name for name in bases):
        raise ValueError(f"tenant {tenant!r} needs one or more knowledge base names")
    return bases


def _link_domains(domains: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(map(allowed_domain, domains)))


def _tenant(row: dict[str, Any]) -> Tenant:
    return Tenant(
        name=row["name"],
        knowledge_bases=tuple(json.loads(row["knowledge_bases"])),
        created_at=row["created_at"],
        link_domains=tuple(json.loads(row["link_domains"])),
    )


def _key_info(row: dict[str, Any]) -> KeyInfo:
    return KeyInfo(
        key_id=row["key_hash"][:KEY_ID_CHARS],
        tenant=row["tenant"],
        role=cast(Role, row["role"]),
        label=row["label"] or "",
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
    )
