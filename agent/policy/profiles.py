"""Gray release: which profile (a set of `Context` overrides) answers which tenant, group or user.

A YAML file names profiles and ordered rules; the first matching rule wins, else the default::

    profiles:
      stable: {}
      qwen14b:
        chat_model: qwen3:14b
        knowledge_bases: [default, faq]
    rules:
      - {profile: qwen14b, tenant: acme, group_ids: ["123456"]}
      - {profile: qwen14b, percent: 10}
    default: stable

A rule matches when every condition it gives holds; `percent` puts a stable share of users
in: a hash of (tenant, user id, profile name) picks a bucket 0..99 that never changes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml
from pydantic import TypeAdapter, ValidationError

from agent.context import Context
from agent.policy._watch import Watched

DEFAULT_PROFILE = "default"
_TOP_KEYS = ("profiles", "rules", "default")
_RULE_KEYS = ("profile", "tenant", "group_ids", "user_ids", "percent")


class ProfileError(ValueError):
    """A profile file that cannot be used; the message names the file and the key."""


@dataclass(frozen=True, slots=True)
class Assignment:
    profile: str
    context_overrides: dict[str, Any]
    """Fields of `Context` this profile sets."""
    knowledge_bases: list[str] | None
    """Knowledge bases to search, or None to keep the tenant's."""

    def apply(self, context: Context) -> Context:
        return dataclasses.replace(context, **self.context_overrides)


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    context_overrides: Mapping[str, Any]
    knowledge_bases: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class Rule:
    profile: str
    tenant: str | None = None
    group_ids: frozenset[str] | None = None
    user_ids: frozenset[str] | None = None
    percent: int | None = None

    def matches(self, tenant: str, group_id: str | None, user_id: str) -> bool:
        return (
            (self.tenant is None or self.tenant == tenant)
            and (self.group_ids is None or group_id in self.group_ids)
            and (self.user_ids is None or user_id in self.user_ids)
            and (self.percent is None or bucket(tenant, user_id, self.profile) < self.percent)
        )


def bucket(tenant: str, user_id: str, salt: str) -> int:
    """0..99, the same in every process and after restarts (unlike the salted `hash()`).

    The profile name salts it, so the 10% of one experiment are not the 10% of the next.
    """
    digest = hashlib.sha256(f"{salt}\0{tenant}\0{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 100


_BUILTIN = Profile(DEFAULT_PROFILE, MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class ProfileBook:
    """Profiles and rules as loaded; immutable."""

    profiles: Mapping[str, Profile]
    rules: tuple[Rule, ...] = ()
    default: str = DEFAULT_PROFILE

    @classmethod
    def builtin(cls) -> ProfileBook:
        """One profile, "default", that changes nothing: what a missing file means."""
        return cls(MappingProxyType({DEFAULT_PROFILE: _BUILTIN}))

    @classmethod
    def load(cls, path: Path | str) -> ProfileBook:
        """Read a profile file; a missing file gives `builtin()`, a bad one `ProfileError`."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return cls.builtin()
        except (OSError, UnicodeDecodeError) as error:
            raise ProfileError(f"{path}: cannot read: {error}") from error
        return cls.parse(text, source=str(path))

    @classmethod
    def parse(cls, text: str, *, source: str = "<profiles>") -> ProfileBook:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise ProfileError(f"{source}: not valid YAML: {error}") from error
        if data is None:
            return cls.builtin()
        top = _mapping(data, source, "the top level")
        _known_keys(top, _TOP_KEYS, source, "the top level")
        profiles = {DEFAULT_PROFILE: _BUILTIN}
        for name, body in _mapping(top.get("profiles") or {}, source, "profiles").items():
            profiles[str(name)] = _profile(str(name), body, source)
        rules = tuple(
            _rule(raw, profiles, source, f"rules[{index}]")
            for index, raw in enumerate(_list(top.get("rules") or [], source, "rules"))
        )
        default = top.get("default", DEFAULT_PROFILE)
        if default not in profiles:
            raise ProfileError(f"{source}: default: no profile named {default!r}")
        return cls(MappingProxyType(profiles), rules, default)

    def assign(self, tenant: str, group_id: str | None, user_id: str) -> Assignment:
        """The first matching rule's profile, else the default one."""
        name = next(
            (rule.profile for rule in self.rules if rule.matches(tenant, group_id, user_id)),
            self.default,
        )
        return self.assignment(name)

    def assignment(self, name: str) -> Assignment:
        """Profile `name` whoever asks (a playground run pins one); `ProfileError` when there is
        none of that name."""
        if name not in self.profiles:
            known = "、".join(sorted(self.profiles))
            raise ProfileError(f"没有名为 {name!r} 的档案；可用：{known}")
        profile = self.profiles[name]
        bases = list(profile.knowledge_bases) if profile.knowledge_bases is not None else None
        return Assignment(name, dict(profile.context_overrides), bases)


class GrayRelease(Watched[ProfileBook]):
    """A `ProfileBook` read from a file and re-read when it changes; serving never breaks.

    The file is looked at no more than once per `check_interval` seconds, on use. An edit that
    does not load keeps the previous book and logs the error, as does a bad file at start (the
    built-in default serves then); use `ProfileBook.load` to fail loudly instead. A missing file
    means the built-in default.
    """

    what = "gray-release profiles"
    errors = (ProfileError,)
    # Most installs run without gray release: no file is the normal case.
    missing_level = logging.INFO

    @property
    def book(self) -> ProfileBook:
        return self.value

    def assign(self, tenant: str, group_id: str | None, user_id: str) -> Assignment:
        return self.book.assign(tenant, group_id, user_id)

    def load(self) -> ProfileBook:
        return ProfileBook.load(self.path)

    def missing(self) -> ProfileBook:
        return ProfileBook.builtin()

    def signature(self) -> tuple[int, int] | None:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return None
        return stat.st_mtime_ns, stat.st_size


@cache
def _context_fields() -> dict[str, TypeAdapter[Any]]:
    hints = typing.get_type_hints(Context)
    return {field.name: TypeAdapter(hints[field.name]) for field in dataclasses.fields(Context)}


def _profile(name: str, body: object, source: str) -> Profile:
    where = f"profiles.{name}"
    overrides = _mapping(body or {}, source, where)
    fields = _context_fields()
    _known_keys(overrides, (*fields, "knowledge_bases"), source, where)
    context: dict[str, Any] = {}
    for key, value in overrides.items():
        if key == "knowledge_bases":
            continue
        try:
            # Strict: YAML already types its scalars, so "yes" for a bool is a mistake to report.
            context[key] = fields[key].validate_python(value, strict=True)
        except ValidationError as error:
            message = error.errors()[0]["msg"]
            raise ProfileError(f"{source}: {where}.{key}: {message} (got {value!r})") from None
    bases = None
    if "knowledge_bases" in overrides:
        bases = tuple(_ids(overrides["knowledge_bases"], source, f"{where}.knowledge_bases"))
        if not bases:
            raise ProfileError(f"{source}: {where}.knowledge_bases: give at least one")
    return Profile(name, MappingProxyType(context), bases)


def _rule(raw: object, profiles: Mapping[str, Profile], source: str, where: str) -> Rule:
    body = _mapping(raw, source, where)
    _known_keys(body, _RULE_KEYS, source, where)
    profile = body.get("profile")
    if profile not in profiles:
        raise ProfileError(f"{source}: {where}.profile: no profile named {profile!r}")
    tenant = body.get("tenant")
    if tenant is not None and not isinstance(tenant, str):
        raise ProfileError(f"{source}: {where}.tenant: expected a name, got {tenant!r}")
    percent = body.get("percent")
    if percent is not None and (
        isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100
    ):
        raise ProfileError(f"{source}: {where}.percent: expected 0..100, got {percent!r}")
    groups, users = body.get("group_ids"), body.get("user_ids")
    return Rule(
        profile=str(profile),
        tenant=tenant,
        group_ids=None if groups is None else frozenset(_ids(groups, source, f"{where}.group_ids")),
        user_ids=None if users is None else frozenset(_ids(users, source, f"{where}.user_ids")),
        percent=percent,
    )


def _mapping(value: object, source: str, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ProfileError(f"{source}: {where}: expected a mapping, got {type(value).__name__}")
    return {str(key): item for key, item in value.items()}


def _list(value: object, source: str, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise ProfileError(f"{source}: {where}: expected a list, got {type(value).__name__}")
    return value


def _ids(value: object, source: str, where: str) -> list[str]:
    # QQ ids are numbers in YAML unless quoted; both mean the same id.
    items = _list(value, source, where)
    for item in items:
        if isinstance(item, bool) or not isinstance(item, str | int) or item == "":
            raise ProfileError(f"{source}: {where}: expected ids, got {item!r}")
    return [str(item) for item in items]


def _known_keys(body: Mapping[str, Any], allowed: tuple[str, ...], source: str, where: str) -> None:
    for key in body:
        if key not in allowed:
            raise ProfileError(
                f"{source}: {where}: unknown key {key!r}; allowed: {', '.join(sorted(allowed))}"
            )
