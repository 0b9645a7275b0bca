"""compose.yaml and the Dockerfile against the settings the code reads, the Compose
specification and what the deployment guide says about them.

No Docker engine runs here or in CI, so the file is checked by parsing it: against the JSON
schema of the oldest Compose release the guide supports (tests/fixtures/compose-spec), after
interpolating `${…}` as Compose does before it validates."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from dotenv import dotenv_values

from agent.doctor import is_bot_variable
from agent.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8"))
SERVICES: dict[str, Any] = COMPOSE["services"]
NONEBOT_KEYS = {"HOST", "PORT", "DRIVER", "LOG_LEVEL", "ONEBOT_ACCESS_TOKEN", "QQ_BOTS"}
# The release whose schema tests/fixtures/compose-spec holds; README, docs/deploy.md and the
# head of compose.yaml state it as the minimum.
MIN_COMPOSE = "v2.20.1"
SCHEMA: dict[str, Any] = json.loads(
    (ROOT / "tests/fixtures/compose-spec/compose-spec.json").read_text(encoding="utf-8")
)
# `${NAME}`, `${NAME:-default}`, `${NAME-default}`, `${NAME:?message}`, `${NAME?message}`: the
# forms every Compose release since v1 interpolates. `$$` is an escaped dollar sign.
INTERPOLATION = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")
NAME = re.compile(r"(?<!\w)[A-Z][A-Z0-9_]*[A-Z0-9](?!\w)", re.ASCII)


def settings_env_names() -> set[str]:
    return {f"QQRAG_{name.upper()}" for name in Settings.model_fields}


def plugin_env_names() -> set[str]:
    from bot.config import Config

    return {name.upper() for name in Config.model_fields}


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """What Compose makes of the file with `env` as its .env, before it checks the schema."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        name, operator, argument = match.groups()
        if name is None:
            return "$"
        unset = env.get(name) is None or (operator in (":-", ":?") and not env[name])
        if unset and operator in (":?", "?"):
            raise ValueError(f"{name}: {argument}")
        if unset:
            return argument or ""
        return env[name]

    # A `$` outside these forms is a newer one (`${NAME:+…}`, nesting) or a typo Compose refuses.
    assert "$" not in INTERPOLATION.sub("", value), f"unsupported interpolation in {value!r}"
    return INTERPOLATION.sub(substitute, value)


def validate(document: dict[str, Any]) -> None:
    validator = jsonschema.validators.validator_for(SCHEMA)
    validator.check_schema(SCHEMA)
    validator(SCHEMA).validate(document)


def dotenv_inputs(service: dict[str, Any]) -> set[str]:
    """The .env variables a container gets: names without a value, and those in `${…}`."""
    names = set()
    for key, value in service.get("environment", {}).items():
        if value is None:
            names.add(key)
        else:
            names |= {m.group(1) for m in INTERPOLATION.finditer(str(value)) if m.group(1)}
    return names


def fixed(service: dict[str, Any]) -> set[str]:
    """Variables compose.yaml sets to a value of its own, whatever .env says."""
    return {k for k, v in service["environment"].items() if v is not None and "${" not in str(v)}


def guide_section(heading: str) -> str:
    text = (ROOT / "docs/deploy.md").read_text(encoding="utf-8")
    start = text.index(f"## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


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


def test_the_service_gets_every_setting_and_nothing_of_the_bot():
    env = SERVICES["service"]["environment"]
    assert set(env) == settings_env_names()
    # `qqrag doctor` in this container skips the bot's check because none of these are there.
    assert not any(is_bot_variable(name) for name in env)
    for key in ("QQRAG_OLLAMA_URL", "QQRAG_MAXKB_URL"):
        host = re.match(r"https?://([^:/]+)", env[key])
        assert host and host.group(1) in SERVICES, f"{key} must name a compose service"
    assert env["QQRAG_HOST"] == "0.0.0.0"


def test_the_bot_gets_every_plugin_setting_and_nothing_of_the_service():
    env = SERVICES["bot"]["environment"]
    plugin = {k for k in env if k.startswith("QQRAG_BOT_")}
    assert plugin == plugin_env_names()
    assert set(env) - plugin == NONEBOT_KEYS
    assert env["QQRAG_BOT_SERVICE_URL"] == "http://service:8000"
    assert env["ONEBOT_ACCESS_TOKEN"].startswith("${ONEBOT_ACCESS_TOKEN:?")


def test_no_service_reads_all_of_dotenv():
    assert not any("env_file" in service for service in SERVICES.values())


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


@pytest.mark.parametrize(
    "dotenv",
    [
        {"ONEBOT_ACCESS_TOKEN": "token"},
        {**dotenv_values(ROOT / ".env.example"), "ONEBOT_ACCESS_TOKEN": "token"},
    ],
    ids=["defaults", "env-example"],
)
def test_the_file_is_valid_for_the_oldest_supported_compose(dotenv: dict[str, str]):
    validate(interpolate(COMPOSE, dotenv))


@pytest.mark.parametrize(
    ("path", "value"),
    [
        # Compose v2.24: env_file entries with `path` and `required`.
        (("services", "service", "env_file"), [{"path": ".env", "required": False}]),
        # Compose v2.38: top-level `models`.
        (("models",), {"llm": {"model": "ai/qwen3"}}),
    ],
    ids=["env_file-required", "models"],
)
def test_constructs_newer_than_the_oldest_supported_compose_fail_the_schema(
    path: tuple[str, ...], value: Any
):
    document = copy.deepcopy(interpolate(COMPOSE, {"ONEBOT_ACCESS_TOKEN": "token"}))
    parent = document
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        validate(document)


def test_the_guide_s_gpu_snippet_is_valid():
    section = guide_section("让 Compose 中的 Ollama 使用 GPU")
    text = section.split("```yaml\n")[1].split("```")[0]
    snippet = yaml.safe_load(text)
    document = copy.deepcopy(interpolate(COMPOSE, {"ONEBOT_ACCESS_TOKEN": "token"}))
    document["services"]["ollama"].update(snippet)
    validate(document)
    assert text.strip() in (ROOT / "compose.yaml").read_text(encoding="utf-8")


def test_the_minimum_compose_version_is_stated_where_operators_look():
    assert MIN_COMPOSE in (ROOT / "tests/fixtures/compose-spec/README.md").read_text(
        encoding="utf-8"
    )
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    deploy = readme[readme.index("## 部署") :]
    assert f"Docker Compose {MIN_COMPOSE} 或更新版本" in deploy
    assert "docker-compose-plugin" in deploy
    guide = guide_section(f"部署 qqrag 需要 Docker Compose {MIN_COMPOSE} 或更新版本")
    assert "docker-compose-plugin" in guide and "1.29" in guide
    head = (ROOT / "compose.yaml").read_text(encoding="utf-8").split("\nname:")[0]
    assert f"Compose {MIN_COMPOSE} or later" in head


def test_the_guide_says_which_variables_reach_which_container():
    section = guide_section("Compose 把 .env 中的哪些变量传给哪个容器")
    bullets = dict(
        line[2:].split("：", 1) for line in section.splitlines() if line.startswith("- ")
    )
    service, bot = SERVICES["service"], SERVICES["bot"]

    fixed_claim = section.split("在 .env 中设置它们不起作用：")[1].split("\n")[0]
    service_fixed, bot_fixed = fixed_claim.split("service 的 ")[1].split("；bot 的 ")
    assert set(NAME.findall(service_fixed)) == fixed(service)
    assert set(NAME.findall(bot_fixed.split("。")[0])) == fixed(bot)

    assert "不以 QQRAG_BOT_ 开头" in bullets["service"]
    assert dotenv_inputs(service) == settings_env_names() - fixed(service)

    prefixed, others = bullets["bot"].split("以及")
    assert "QQRAG_BOT_" in prefixed and set(NAME.findall(prefixed)) == fixed(bot) & {
        k for k in bot["environment"] if k.startswith("QQRAG_BOT_")
    }
    assert dotenv_inputs(bot) == plugin_env_names() - fixed(bot) | set(NAME.findall(others))

    names, in_container = bullets["napcat"].split("（")
    assert set(NAME.findall(names)) == dotenv_inputs(SERVICES["napcat"])
    assert set(NAME.findall(in_container)) == set(SERVICES["napcat"]["environment"])

    assert bullets["ollama、maxkb"] == "不读取 .env。"
    for name in ("ollama", "maxkb"):
        assert "${" not in json.dumps(SERVICES[name]) and not dotenv_inputs(SERVICES[name])

    for container in ("service", "bot"):
        claim = section.split(f"不会进入 {container} 容器")[0].rsplit("：", 1)[-1]
        claim = claim.rsplit("；", 1)[-1]
        kept_out = set(NAME.findall(claim))
        assert kept_out, container
        assert not kept_out & (
            set(SERVICES[container]["environment"]) | dotenv_inputs(SERVICES[container])
        )
