from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr
from rich.cells import cell_len
from typer.testing import CliRunner

from agent.cli import app
from agent.doctor import Finding, check_workers, run_checks
from agent.settings import Settings, get_settings
from evals.fakes.ollama import FakeOllama
from tests.conftest import FIXTURES


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOllama]:
    with FakeOllama(models=("qwen3:8b", "qwen3-embedding:0.6b")) as server:
        yield server


def settings_for(tmp_path: Path, url: str, **extra: object) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        ollama_url=url,
        data_dir=tmp_path / "data",
        default_docs=FIXTURES / "kb",
        **extra,
    )


def by_check(findings: list[Finding]) -> dict[str, tuple[str, str]]:
    return {f.check: (f.status, f.fix) for f in findings}


BOT_OK = {"QQRAG_BOT_ADAPTERS": "onebot", "ONEBOT_ACCESS_TOKEN": "secret"}


async def test_all_well(tmp_path: Path, fake: FakeOllama):
    findings = await run_checks(
        settings_for(tmp_path, fake.url), containerised=False, environ=BOT_OK
    )
    assert [(f.check, f.status) for f in findings] == [
        ("Ollama 连接", "ok"),
        ("模型 qwen3:8b", "ok"),
        ("QQ 机器人", "ok"),
        ("工作进程", "ok"),
        ("数据目录", "ok"),
        ("嵌入式知识库", "warn"),
    ]
    assert "首次启动会自动导入" in findings[-1].detail


def test_more_workers_than_cores_is_a_warning(tmp_path: Path):
    settings = settings_for(tmp_path, "http://127.0.0.1:11434", workers=4)
    [finding] = check_workers(settings, cores=2)
    assert (finding.status, finding.fix) == ("warn", "把 QQRAG_WORKERS 设为不超过 2")
    assert check_workers(settings, cores=4)[0].status == "ok"


async def test_missing_model_and_wrong_capability(tmp_path: Path, fake: FakeOllama):
    settings = settings_for(tmp_path, fake.url, classify_model="qwen3:4b", embed_model="qwen3:8b")
    found = by_check(await run_checks(settings, containerised=False))
    assert found["模型 qwen3:4b"] == ("error", "运行 ollama pull qwen3:4b")
    assert found["模型 qwen3:8b"][0] == "error"  # a chat model configured as the embedding model


async def test_unreachable_ollama(tmp_path: Path):
    findings = await run_checks(settings_for(tmp_path, "http://127.0.0.1:9"), containerised=False)
    ollama = next(f for f in findings if f.check == "Ollama 连接")
    assert ollama.status == "error"
    assert "降级模式" in ollama.detail and "ollama serve" in ollama.fix


async def test_localhost_inside_a_container_and_v1_suffix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("QQRAG_OLLAMA_URL", "http://127.0.0.1:9/v1")  # nothing listens there
    settings = Settings(_env_file=None, data_dir=tmp_path / "d", default_docs=FIXTURES / "kb")  # type: ignore[call-arg]
    findings = await run_checks(settings, containerised=True, environ=BOT_OK)
    url_findings = [f for f in findings if f.check == "Ollama 地址"]
    assert [f.status for f in url_findings] == ["warn", "error"]
    assert "/v1" in url_findings[0].detail
    assert "http://ollama:11434" in url_findings[1].fix


async def test_localhost_inside_a_container_is_fine_when_the_live_check_connects(
    tmp_path: Path, fake: FakeOllama
):
    """Host networking, or Ollama in the same container: the live check has the last word."""
    findings = await run_checks(
        settings_for(tmp_path, fake.url),
        containerised=True,
        environ=BOT_OK
        | {
            "QQRAG_BOT_SERVICE_URL": fake.url  # a local URL that answers from here
        },
    )
    assert not [f for f in findings if f.status == "error"], findings
    assert "Ollama 地址" not in by_check(findings)


async def test_unwritable_data_dir(tmp_path: Path, fake: FakeOllama):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    settings = Settings(_env_file=None, ollama_url=fake.url, data_dir=blocker / "data")  # type: ignore[call-arg]
    found = by_check(await run_checks(settings, containerised=False))
    assert found["数据目录"][0] == "error"
    assert "嵌入式知识库" not in found  # nothing to open without a data folder


def test_cli_exit_code_says_whether_all_is_well(
    tmp_path: Path, fake: FakeOllama, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("QQRAG_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("QQRAG_DEFAULT_DOCS", str(FIXTURES / "kb"))
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv("QQRAG_OLLAMA_URL", fake.url)
    monkeypatch.setattr("agent.doctor.in_container", lambda: False)
    monkeypatch.setattr("agent.doctor.bot_environment", lambda: BOT_OK)
    get_settings.cache_clear()
    healthy = CliRunner().invoke(app, ["doctor"])
    assert healthy.exit_code == 0, healthy.output
    assert "一切正常" in healthy.output
    monkeypatch.setenv("QQRAG_CHAT_MODEL", "llama9:1t")
    get_settings.cache_clear()
    broken = CliRunner().invoke(app, ["doctor"])
    assert broken.exit_code == 1
    assert "ollama pull llama9:1t" in broken.output


def test_bot_settings():
    from agent.doctor import check_bot

    found = {f.check: f for f in check_bot({"QQRAG_BOT_TIMEOUT": "90"}, containerised=True)}
    assert found["QQ 机器人 · OneBot"].status == "warn"
    assert found["QQ 机器人 · 官方 API"].status == "warn"
    assert found["QQ 机器人 · 服务地址"].status == "error"
    answered = check_bot({}, containerised=True, service_reachable=True)
    assert "QQ 机器人 · 服务地址" not in {f.check for f in answered}
    broken = check_bot({"QQRAG_BOT_ADAPTERS": "qq", "QQ_BOTS": '[{"id": "1"}]'}, False)
    assert [(f.check, f.status) for f in broken] == [("QQ 机器人 · 官方 API", "error")]
    fine = check_bot(
        {"QQRAG_BOT_ADAPTERS": "qq", "QQ_BOTS": '[{"id": "1", "secret": "s"}]'}, containerised=False
    )
    assert [(f.check, f.status) for f in fine] == [("QQ 机器人", "ok")]


def test_a_container_without_the_bot_settings_does_not_check_the_bot():
    """Compose's service container: the bot's settings, tokens included, are the bot's alone."""
    from agent.doctor import check_bot

    [finding] = check_bot({"QQRAG_CHAT_MODEL": "qwen3:8b"}, containerised=True)
    assert (finding.check, finding.status) == ("QQ 机器人", "ok")
    assert "不检查" in finding.detail
    # Outside a container the bot shares .env with the service, so its defaults are judged.
    outside = {f.check: f.status for f in check_bot({}, containerised=False)}
    assert outside["QQ 机器人 · OneBot"] == "warn"


async def test_maxkb_reachable_and_key_checked(tmp_path: Path, fake: FakeOllama):
    from agent.doctor import check_maxkb
    from evals.fakes.maxkb import FIXTURE_KNOWLEDGE_ID, FakeMaxKB

    with FakeMaxKB() as maxkb:
        good = settings_for(
            tmp_path,
            fake.url,
            knowledge_backend="maxkb",
            maxkb_url=maxkb.url,
            maxkb_token=maxkb.user_token,
            maxkb_knowledge_ids=[FIXTURE_KNOWLEDGE_ID],
        )
        assert [f.status for f in await check_maxkb(good)] == ["ok"]
        wrong = good.model_copy(update={"maxkb_token": SecretStr("expired")})
        (finding,) = await check_maxkb(wrong)
        assert finding.status == "error" and "QQRAG_MAXKB_TOKEN" in finding.detail
    missing = settings_for(tmp_path, fake.url, knowledge_backend="maxkb")
    (finding,) = await check_maxkb(missing)
    assert finding.status == "error" and "QQRAG_MAXKB_URL" in finding.detail


async def test_maxkb_names_the_fallback_only_where_the_service_uses_it(
    tmp_path: Path, fake: FakeOllama
):
    from agent.doctor import check_maxkb
    from evals.fakes.maxkb import FIXTURE_KNOWLEDGE_ID, FakeMaxKB

    with FakeMaxKB() as maxkb:
        base = settings_for(
            tmp_path,
            fake.url,
            knowledge_backend="maxkb",
            maxkb_url=maxkb.url,
            maxkb_token=SecretStr("expired"),
            maxkb_knowledge_ids=[FIXTURE_KNOWLEDGE_ID],
        )
        # An outage, but the embedded base is empty: nothing stands in.
        (empty,) = await check_maxkb(base)
        wrong_path = base.model_copy(
            update={"maxkb_token": SecretStr(maxkb.user_token), "maxkb_admin_path": "/maxkb"}
        )
        (redirected,) = await check_maxkb(wrong_path)

    assert empty.status == "error" and "备用知识库" in empty.detail
    assert "已改用" not in empty.detail and "顶上" not in empty.detail
    assert "QQRAG_MAXKB_ADMIN_PATH" in redirected.detail
    assert "已改用" not in redirected.detail and "顶上" not in redirected.detail


async def test_maxkb_shows_the_daily_limit_the_service_met(tmp_path: Path, fake: FakeOllama):
    """Chat mode's check spends no access: doctor reads what the service's searches met."""
    from agent.backends import knowledge
    from agent.doctor import check_maxkb
    from evals.fakes.maxkb import FakeMaxKB
    from tools.base import KnowledgeUnavailable
    from tools.kb import EmbeddedKB

    with FakeMaxKB(access_num=0) as maxkb:
        settings = settings_for(
            tmp_path,
            fake.url,
            knowledge_backend="maxkb",
            maxkb_mode="app_chat_v2",
            maxkb_url=maxkb.url,
            maxkb_api_key=SecretStr(maxkb.api_key),
            maxkb_fallback_embedded=False,
        )
        embedded = EmbeddedKB(settings.kb_path, settings.kb_name)
        service = knowledge(settings, embedded, lambda _: None)
        with pytest.raises(KnowledgeUnavailable):
            await service.search("广三铁路在哪年建成？", 3)
        embedded.close()
        (finding,) = await check_maxkb(settings)

    assert finding.status == "error" and "访问次数已用完" in finding.detail
    assert "access_num" in finding.fix


def doctor(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    """`qqrag doctor` in a child process, its output piped (as in a deploy script)."""
    inherited = {
        k: v
        for k, v in os.environ.items()
        if not k.upper().startswith(("QQRAG_", "QQ_", "ONEBOT_", "OLLAMA_"))
        and k not in {"COLUMNS", "container", "KUBERNETES_SERVICE_HOST"}
    }
    env = {
        "QQRAG_DATA_DIR": str(cwd / "data"),
        "QQRAG_DEFAULT_DOCS": str(FIXTURES / "kb"),
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", "doctor"],
        env={**inherited, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_piped_at_80_columns_the_fixes_are_wrapped_and_never_cut(tmp_path: Path):
    result = doctor(
        {
            "COLUMNS": "80",
            "container": "podman",  # the variable Podman sets in its containers
            "QQRAG_OLLAMA_URL": "http://127.0.0.1:9",  # nothing listens there
            "QQRAG_BOT_ADAPTERS": "qq",
            "QQ_BOTS": '[{"id": "1"}]',  # no secret: the fix is a long line of JSON
        },
        tmp_path,
    )
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    for line in lines:
        # Longer than the width only where one piece (a URL, a line of JSON) is longer.
        assert cell_len(line) <= 80 or " " not in line.strip(), line
    stripped = [line.strip() for line in lines]
    bots = 'QQ_BOTS=[{"id":"AppID","token":"","secret":"AppSecret","intent":{"c2c_group_at_messages":true}}]'
    assert bots in stripped
    fix = next(f for f in lines if "怎么修：改成 compose 服务名" in f)
    rest = lines[lines.index(fix) + 1]
    assert cell_len(fix) <= 80 and "（如 http://ollama:11434）" in fix
    assert rest == "      http://host.docker.internal:11434）"


def test_inside_a_container_a_local_ollama_that_answers_is_no_error(
    tmp_path: Path, fake: FakeOllama
):
    result = doctor(
        {
            "container": "podman",
            "QQRAG_OLLAMA_URL": fake.url,  # http://127.0.0.1:…
            "QQRAG_BOT_ADAPTERS": "onebot",
            "ONEBOT_ACCESS_TOKEN": "secret",
            "QQRAG_BOT_SERVICE_URL": fake.url,  # local too, and answering
        },
        tmp_path,
    )
    assert result.returncode == 0, result.stdout
    lines = result.stdout.splitlines()
    assert any(line.startswith("正常  Ollama 连接") for line in lines)
    assert not [line for line in lines if line.startswith("错误")]
