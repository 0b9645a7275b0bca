"""The settings as an operator meets them: by their variable names (QQRAG_PORT), where each
value came from, a Chinese line for each bad value, and a warning for each name that is no
setting. Shared by the service's settings and the bot's (`bot/config.py`)."""

from __future__ import annotations

import difflib
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from dotenv import dotenv_values
from pydantic import AliasChoices, BaseModel, SecretStr, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import to_jsonable_python

from agent.settings import Settings
from agent.validation import explain

ENVIRONMENT = "环境变量"
DEFAULT = "默认值"

DEVELOPMENT_NAMES = frozenset(
    {
        "QQRAG_TEST_POSTGRES_URL",
        "QQRAG_TEST_REDIS_URL",
        "QQRAG_BENCH_POSTGRES_URL",
        "QQRAG_REQUIRE_SCALE_OUT",
    }
)
"""QQRAG_* names that the test suite and the benchmarks read (tests/, evals/): no setting
of the service or the bot, and no mistake either."""

Files = Sequence[tuple[str, Mapping[str, str | None]]]
"""The files a program reads its settings from, by name, the one that wins first."""

_SECRET_WORDS = frozenset({"secret", "token", "key", "password"})


class ConfigError(Exception):
    """Settings that cannot be used, as one Chinese line each."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


@dataclass(frozen=True)
class Source:
    """Where a setting's value came from: `where` (ENVIRONMENT, a file's name or DEFAULT) and
    the variable that set it."""

    where: str
    name: str
    alias: bool = False
    """Set by a second name (OLLAMA_HOST for QQRAG_OLLAMA_URL)."""

    def __str__(self) -> str:
        return f"{self.where}（{self.name}）" if self.alias else self.where

    def place(self) -> str:
        """Where to change the setting: "环境变量 QQRAG_PORT", ".env 里的 QQRAG_PORT"."""
        if self.where in (ENVIRONMENT, DEFAULT):
            return f"{ENVIRONMENT} {self.name}"
        return f"{self.where} 里的 {self.name}"


@dataclass(frozen=True)
class Shown:
    """One setting as `qqrag config` shows it."""

    name: str
    value: Any
    source: Source


def source_of(names: Sequence[str], environ: Mapping[str, str], files: Files) -> Source:
    """Where a setting read from `names` got its value: the environment wins over the files,
    and both ignore the case of a name (pydantic-settings and NoneBot alike)."""
    wanted = [name.upper() for name in names]
    for where, found in ((ENVIRONMENT, environ), *files):
        present = {key.upper() for key in found}
        for name in wanted:
            if name in present:
                return Source(where, name, alias=name != wanted[0])
    return Source(DEFAULT, wanted[0])


def spaced(text: str) -> str:
    """`text` to go between Chinese words: a space on a side where it has a Latin letter."""
    return f"{' ' if text[:1].isascii() else ''}{text}{' ' if text[-1:].isascii() else ''}"


def without_password(value: str) -> str:
    """A database or Redis URL with its password starred; any other text as it is."""
    if "://" not in value:
        return value
    parts = urlsplit(value)
    if parts.password is None:
        return value
    user = f"{parts.username}:" if parts.username else ":"
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}***@{host}"))


def is_secret(field: str, info: FieldInfo) -> bool:
    """A key, token or password: by its type, or by its name where a library (NoneBot's
    adapters) keeps one in a plain string."""
    return info.annotation is SecretStr or field.lower().rsplit("_", 1)[-1] in _SECRET_WORDS


def masked(value: Any, secret: bool = False) -> Any:
    """`value` fit to show: secrets starred (an empty one stays empty, so that a missing key is
    seen), passwords inside URLs starred, secrets inside structures (QQ_BOTS) too; as JSON
    values."""
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if secret and value:
        return "***"
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if isinstance(value, Mapping):
        return {key: masked(item, str(key).lower() in _SECRET_WORDS) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [masked(item) for item in value]
    if isinstance(value, str):
        return without_password(value)
    return to_jsonable_python(value)  # paths, IP addresses … as text


def env_names(field: str, info: FieldInfo) -> list[str]:
    """The variables a service setting is read from, the one that wins first."""
    alias = info.validation_alias
    if isinstance(alias, AliasChoices):
        return [str(choice) for choice in alias.choices]
    return [f"QQRAG_{field.upper()}"]


SERVICE_NAMES = {field: env_names(field, info) for field, info in Settings.model_fields.items()}
"""Each service setting's variables, by field."""


def service_files() -> Files:
    """The `.env` file the service reads, as pydantic-settings finds it (the working folder)."""
    env_file = Settings.model_config.get("env_file")
    return [(str(env_file), dotenv_values(env_file))] if isinstance(env_file, str) else []


def shown(
    model: BaseModel, names: Mapping[str, Sequence[str]], environ: Mapping[str, str], files: Files
) -> list[Shown]:
    """Every field of `model`, under its first variable name, masked, with its source."""
    return [
        Shown(
            names[field][0],
            masked(getattr(model, field), is_secret(field, info)),
            source_of(names[field], environ, files),
        )
        for field, info in type(model).model_fields.items()
    ]


def problems(
    exc: ValidationError,
    model: type[BaseModel],
    names: Mapping[str, Sequence[str]],
    environ: Mapping[str, str],
    files: Files,
) -> ConfigError:
    """One Chinese line for each bad value: which setting, what it should be, what it is now
    (unless a secret) and where to change it."""
    lines = []
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else ""
        source = source_of(names.get(field, [field.upper()]), environ, files)
        info = model.model_fields.get(field)
        hidden = info is None or is_secret(field, info)
        now = "" if hidden else f"，现在是“{error['input']}”"
        lines.append(
            f"配置错误：{explain(error, source.name)}{now}。请改正{spaced(source.place())}后再运行。"
        )
    return ConfigError(lines)


def service_problems(exc: ValidationError, environ: Mapping[str, str]) -> ConfigError:
    """What is wrong with the service's settings (`Settings()` raised `exc`)."""
    return problems(exc, Settings, SERVICE_NAMES, environ, service_files())


def unknown(
    found: Iterable[tuple[str, Iterable[str]]], known: Collection[str], prefix: str = "QQRAG_"
) -> list[str]:
    """A warning for each `prefix` name that is no setting, with the closest setting when one
    is close: a mistyped name is otherwise silently ignored. `found`: where, and the names
    there."""
    known = {name.upper() for name in known}
    # Every name shares the prefix, which would make any two of them look alike.
    bare = {name.removeprefix(prefix): name for name in known if name.startswith(prefix)}
    lines = []
    for where, names in found:
        for name in sorted({n.upper() for n in names if n.upper().startswith(prefix)} - known):
            close = difflib.get_close_matches(name.removeprefix(prefix), bare, n=1, cutoff=0.75)
            hint = f"，是不是 {bare[close[0]]}？" if close else "；qqrag config 列出所有配置项。"
            place = Source(where, name).place()
            lines.append(f"注意：{place} 不是 qqrag 的配置项，不会生效{hint}")
    return lines
