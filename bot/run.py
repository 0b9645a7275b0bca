"""Start the QQ front end: NoneBot, the adapters named in QQRAG_BOT_ADAPTERS, the qqrag plugin."""

from __future__ import annotations

import nonebot
from nonebot.adapters import Adapter
from nonebot.adapters.onebot.v11 import Adapter as OneBotAdapter
from nonebot.adapters.qq import Adapter as QQAdapter
from nonebot.config import Config as NoneBotConfig
from nonebot.log import logger

from bot.config import DRIVER, env_files

PLUGIN = "bot.plugins.qqrag"

ADAPTERS: dict[str, type[Adapter]] = {"onebot": OneBotAdapter, "qq": QQAdapter}


def _driver_configured() -> bool:
    """Whether DRIVER is set in the environment or in a `.env` file NoneBot reads."""
    return "driver" in NoneBotConfig(_env_file=env_files()).model_fields_set


def main() -> None:
    """Initialise NoneBot, register the configured adapters, load the plugin and serve."""
    nonebot.init(**({} if _driver_configured() else {"driver": DRIVER}))
    nonebot.load_plugin(PLUGIN)
    # Imported after loading: NoneBot refuses a plugin module that was imported before.
    from bot.plugins.qqrag import plugin_config

    driver = nonebot.get_driver()
    names = dict.fromkeys(plugin_config.qqrag_bot_adapters)
    for name in names:
        driver.register_adapter(ADAPTERS[name])
    if (
        "onebot" in names
        and not nonebot.get_adapter(OneBotAdapter).onebot_config.onebot_access_token
    ):
        logger.warning("ONEBOT_ACCESS_TOKEN is empty: anyone who reaches this port can pose as QQ")
    nonebot.run()
