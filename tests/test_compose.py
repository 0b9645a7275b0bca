"""compose.yaml and the Dockerfile against the settings the code actually reads.

No Docker engine runs here or in CI, so the file is checked by parsing it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8"))
SERVICES: dict[str, Any] = COMPOSE["services"]
NONEBOT_KEYS = {"HOST", "PORT", "DRIVER", "ONEBOT_ACCESS_TOKEN", "QQ_BOTS"}


def settings_env_names() -> set[str]:
    return {f"QQRAG_{name.upper()}" for name in Settings.model_fields}


def test_services_and_profiles():
    assert set(SERVICES) == {"ollama", "maxkb", "service", "bot", "napcat"}
    assert SERVICES["napcat"]["profiles"] == ["napcat"]
    assert SERVICES["maxkb"]["image"].startswith("1panel/maxkb")
    assert SERVICES["ollama"]["environment"]["OLLAMA_HOST"] == "0.0.0.0:11434"
    assert any(v.endswith(":/root/.ollama") for v in SERVICES["ollama"]["volumes"])


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_service_has_a_health_check_and_waits_for_healthy_dependencies(name: str):
    service = SERVICES[name]
    assert service["healthcheck"]["test"]
    for dependency, condition in service.get("depends_on", {}).items():
        assert dependency in SERVICES
        assert condition == {"condition": "service_healthy"}


def test_service_environment_names_exist_in_the_settings():
    env = SERVICES["service"]["environment"]
    assert set(env) <= settings_env_names()
    for key in ("QQRAG_OLLAMA_URL", "QQRAG_MAXKB_URL"):
        host = re.match(r"https?://([^:/]+)", env[key])
        assert host and host.group(1) in SERVICES, f"{key} must name a compose service"
    assert env["QQRAG_HOST"] == "0.0.0.0"


def test_bot_environment_names_exist_in_the_plugin_config():
    from bot.plugins.qqrag.config import Config

    env = SERVICES["bot"]["environment"]
    plugin = {k for k in env if k.startswith("QQRAG_BOT_")}
    assert {k.lower() for k in plugin} <= set(Config.model_fields)
    assert set(env) - plugin <= NONEBOT_KEYS
    assert env["QQRAG_BOT_SERVICE_URL"] == "http://service:8000"
    assert env["ONEBOT_ACCESS_TOKEN"].startswith("${ONEBOT_ACCESS_TOKEN:?")


def test_ports_match_what_each_process_listens_on():
    service, bot = SERVICES["service"], SERVICES["bot"]
    assert service["ports"] == [f"127.0.0.1:8000:{service['environment']['QQRAG_PORT']}"]
    assert "8000/healthz" in " ".join(service["healthcheck"]["test"])
    assert bot["ports"] == [f"8080:{bot['environment']['PORT']}"]
    assert "8080" in " ".join(bot["healthcheck"]["test"])


def test_dockerfile_installs_the_project_with_its_guide():
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert "COPY docs docs" in dockerfile and "RUN pip install ." in dockerfile
    assert 'CMD ["qqrag", "serve"]' in dockerfile
    assert SERVICES["service"]["build"] == "."
    assert SERVICES["bot"]["image"] == SERVICES["service"]["image"]
