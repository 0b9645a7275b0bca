"""The plugin's settings as NoneBot hands them over (`.env` values arrive JSON-decoded)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError


def test_settings_accept_what_dotenv_files_produce() -> None:
    from bot.config import Config

    config = Config.model_validate(
        {
            "qqrag_bot_api_key": 987,
            "qqrag_bot_nicknames": "小知，知知, bot",
            "qqrag_bot_adapters": "qq",
            "qqrag_bot_timeout": "30",
        }
    )
    assert config.qqrag_bot_api_key.get_secret_value() == "987"
    assert config.qqrag_bot_nicknames == ["小知", "知知", "bot"]
    assert config.qqrag_bot_adapters == ["qq"]
    assert config.qqrag_bot_timeout == 30.0
    assert Config.model_validate({"qqrag_bot_nicknames": 123}).qqrag_bot_nicknames == ["123"]
    assert Config.model_validate({"qqrag_bot_nicknames": ["小知", 7]}).qqrag_bot_nicknames == [
        "小知",
        "7",
    ]
    assert Config().qqrag_bot_adapters == ["onebot", "qq"]


@pytest.mark.parametrize(
    "settings",
    [
        {"qqrag_bot_adapters": "onebot,telegram"},
        {"qqrag_bot_qq_max_replies": 6},
        {"qqrag_bot_max_connections": 0},
    ],
)
def test_settings_refuse_what_cannot_work(settings: dict[str, object]) -> None:
    from bot.config import Config

    with pytest.raises(ValidationError):
        Config.model_validate(settings)


def test_root_env_example_documents_every_plugin_setting() -> None:
    from pathlib import Path

    from dotenv import dotenv_values

    from bot.config import Config

    example = dotenv_values(Path(__file__).resolve().parents[2] / ".env.example")
    documented = {k.lower() for k in example if k.startswith("QQRAG_BOT_")}
    assert documented == set(Config.model_fields)
    config = Config.model_validate(
        {k.lower(): v for k, v in example.items() if k.lower() in documented}
    )
    assert config.qqrag_bot_service_url == "http://127.0.0.1:8000"
