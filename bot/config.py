"""The bot's settings: the plugin's own (`Config`, read from NoneBot's configuration: the
environment and `.env` files), and all the bot reads, the way NoneBot reads them, for
`qqrag config` and `qqrag bot` to show and check before NoneBot starts.

Outside the plugin package: importing that one needs NoneBot initialised."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from dotenv import dotenv_values
from pydantic import BaseModel, BeforeValidator, Field, SecretStr, ValidationError

from agent.configuration import (
    ConfigError,
    Files,
    Shown,
    masked,
    problems,
    shown,
    source_of,
    spaced,
)

AdapterName = Literal["onebot", "qq"]

DRIVER = "~fastapi+~httpx+~websockets"
"""ASGI server for reverse WebSocket and webhooks, HTTP and WebSocket clients for the QQ API:
the driver unless DRIVER is set."""


def _as_text(value: Any) -> Any:
    # NoneBot decodes `.env` values as JSON, so a numeric key or nickname arrives as a number.
    return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


def _as_list(value: Any) -> Any:
    value = _as_text(value)
    if isinstance(value, str):
        return [part.strip() for part in value.replace("，", ",").split(",") if part.strip()]
    if isinstance(value, list):
        return [_as_text(item) for item in value]
    return value


class Config(BaseModel):
    """Every field carries the `qqrag_bot_` prefix: NoneBot shares one `.env` among plugins."""

    qqrag_bot_service_url: str = Field(
        default="http://127.0.0.1:8000", description="Base URL of the qqrag HTTP service."
    )
    qqrag_bot_api_key: Annotated[SecretStr, BeforeValidator(_as_text)] = Field(
        default=SecretStr(""), description="Sent as `Authorization: Bearer` when not empty."
    )
    qqrag_bot_timeout: float = Field(
        default=90.0, gt=0, description="Seconds to wait for one answer from the service."
    )
    qqrag_bot_max_connections: int = Field(
        default=32,
        ge=1,
        description="Questions in flight to the service at once, one pooled connection each; "
        "4 times the service's default QQRAG_MAX_INFLIGHT_TURNS (8), so that past its bound "
        "the service, which answers busy at once, decides rather than a queue in the bot.",
    )
    qqrag_bot_adapters: Annotated[list[AdapterName], BeforeValidator(_as_list)] = Field(
        default=["onebot", "qq"],
        description="Adapters `bot.run` registers: onebot, qq, or both (comma-separated).",
    )
    qqrag_bot_nicknames: Annotated[list[str], BeforeValidator(_as_list)] = Field(
        default_factory=list,
        description="Names that address the bot in groups when they start a message.",
    )
    qqrag_bot_max_chars: int = Field(
        default=1000, ge=100, le=4000, description="Longest single message sent."
    )
    qqrag_bot_forward_threshold: int = Field(
        default=600,
        ge=0,
        description="OneBot groups: longer replies go out as a merged forward message; 0: never.",
    )
    qqrag_bot_forward_name: str = Field(
        default="知识库助手", description="Sender name shown on merged forward nodes."
    )
    qqrag_bot_qq_max_replies: int = Field(
        default=5, ge=1, le=5, description="Official API: passive replies per message (max 5)."
    )
    qqrag_bot_onebot_mask_links: bool = Field(
        default=False, description="Also mask links on OneBot (the official API always does)."
    )
    qqrag_bot_notice_after: float = Field(
        default=0.0, ge=0, description="Seconds before a single 'please wait' notice; 0: never."
    )
    qqrag_bot_notice_text: str = Field(
        default="正在查找资料，请稍候……", description="The notice sent after notice_after seconds."
    )


NONEBOT_FIELDS = ("host", "port", "driver")
"""NoneBot's own settings that the bot's deployment sets (its other ones keep their defaults)."""


def env_files() -> tuple[str, str]:
    """The files NoneBot reads, in its order: `.env.{ENVIRONMENT}` wins over `.env`."""
    from nonebot.config import Env

    return (".env", f".env.{Env().environment}")


def read_files() -> Files:
    """The bot's settings files as `agent.configuration` wants them, the winner first."""
    return [(name, dotenv_values(name)) for name in reversed(env_files()) if os.path.isfile(name)]


def _models() -> list[type[BaseModel]]:
    from nonebot.adapters.onebot.v11.config import Config as OneBotConfig
    from nonebot.adapters.qq.config import Config as QQConfig

    return [Config, OneBotConfig, QQConfig]


def names() -> dict[str, list[str]]:
    """Each bot setting's variable, by field: NoneBot reads a field from its name in capitals."""
    fields = [*NONEBOT_FIELDS, *(field for model in _models() for field in model.model_fields)]
    return {field: [field.upper()] for field in fields}


def read(environ: Mapping[str, str]) -> list[Shown]:
    """Every bot setting, masked, with where its value came from; read as `nonebot.init` and
    `get_plugin_config` read them (the same NoneBot calls), without starting NoneBot.
    ConfigError for a bad value."""
    from nonebot.compat import model_dump
    from nonebot.config import BaseSettings, SettingsError
    from nonebot.config import Config as NoneBotConfig

    files, variables = env_files(), names()
    found = read_files()
    try:
        nonebot = NoneBotConfig(_env_file=files)
    except SettingsError as exc:
        raise _not_json(exc, environ, found) from None
    except ValidationError as exc:
        raise problems(exc, NoneBotConfig, variables, environ, found) from None
    given = model_dump(nonebot)
    own = {field: given[field] for field in NONEBOT_FIELDS}
    if "driver" not in nonebot.model_fields_set:
        own["driver"] = DRIVER  # what bot.run starts NoneBot with
    listed = [
        Shown(field.upper(), masked(value), source_of(variables[field], environ, found))
        for field, value in own.items()
    ]
    for model in _models():
        try:
            values = BaseSettings._settings_build_values(
                model,
                given,
                env_file=files,
                env_file_encoding="utf-8",
                env_nested_delimiter=nonebot._env_nested_delimiter,
            )
            listed += shown(model.model_validate(values), variables, environ, found)
        except SettingsError as exc:
            raise _not_json(exc, environ, found) from None
        except ValidationError as exc:
            raise problems(exc, model, variables, environ, found) from None
    return listed


def _not_json(exc: ValueError, environ: Mapping[str, str], files: Files) -> ConfigError:
    # NoneBot's own complaint about a value it reads as JSON: 'error parsing env var "qq_bots"'.
    quoted = re.search(r'"([^"]+)"', str(exc))
    name = quoted.group(1).upper() if quoted else "QQ_BOTS"
    place = source_of([name], environ, files).place()
    return ConfigError([f"配置错误：{name} 要是一行合法的 JSON。请改正{spaced(place)}后再运行。"])
