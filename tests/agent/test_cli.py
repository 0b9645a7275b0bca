"""The `qqrag` command, driven through typer's runner with a real data folder."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.cells import cell_len
from typer.testing import CliRunner

from agent.cli import app
from agent.settings import get_settings
from evals.fakes.ollama import FakeOllama
from evals.harness import free_port
from tests.conftest import FIXTURES

runner = CliRunner()


@pytest.fixture
def data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("QQRAG_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("QQRAG_DEFAULT_DOCS", str(FIXTURES / "kb"))
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps at 80 columns otherwise
    get_settings.cache_clear()
    return tmp_path / "data"


@pytest.fixture
def fake_ollama(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOllama]:
    with FakeOllama() as fake:
        monkeypatch.setenv("QQRAG_OLLAMA_URL", fake.url)
        get_settings.cache_clear()
        yield fake


def test_kb_add_list_and_search(data_dir: Path):
    added = runner.invoke(app, ["kb", "add", str(FIXTURES / "kb")])
    assert added.exit_code == 0, added.output
    assert "新增 2 个文件" in added.output and "写入 8 段" in added.output

    again = runner.invoke(app, ["kb", "add", str(FIXTURES / "kb")])
    assert "未改动 2 个" in again.output and "写入 0 段" in again.output

    listed = runner.invoke(app, ["kb", "list"])
    assert "moonlight.md" in listed.output and "stardust.md" in listed.output
    assert "共 8 段" in listed.output

    found = runner.invoke(app, ["kb", "search", "月光扫地机器人滤网多久更换", "-k", "1"])
    assert found.exit_code == 0
    assert "月光扫地机器人的保养" in found.output


def test_kb_add_rejects_a_missing_path(data_dir: Path):
    result = runner.invoke(app, ["kb", "add", "no/such/file.md"])
    assert result.exit_code == 2
    assert "does not exist" in result.output


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["serve", "--port", "abc"],
            "命令行参数有误：--port 要是整数。用 qqrag serve --help 查看用法。",
        ),
        (
            ["serve", "--prot", "1"],
            "命令行参数有误：qqrag serve 没有选项 --prot，是不是 --port？用 qqrag serve --help 查看用法。",
        ),
        (
            ["serev"],
            "命令行参数有误：qqrag 没有 serev 这个命令，是不是 serve？用 qqrag --help 查看用法。",
        ),
        (["kb", "search"], "命令行参数有误：缺少 query。用 qqrag kb search --help 查看用法。"),
    ],
)
def test_a_command_line_mistake_is_one_chinese_line(data_dir: Path, args: list[str], line: str):
    result = runner.invoke(app, args, prog_name="qqrag")
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [line]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def sources(data_dir: Path, kb: str = "default") -> dict[str, str | None]:
    from tools.kb import EmbeddedKB

    with EmbeddedKB(data_dir / "kb.sqlite", kb) as base:
        return {info.source: info.origin for info in base.sources()}


def test_kb_add_of_another_folder_keeps_its_same_named_file_apart(data_dir: Path, tmp_path: Path):
    printers = write(tmp_path / "printers" / "guide.md", "# 打印机\n\n星尘打印机喷头保修六个月。\n")
    robots = write(tmp_path / "robots" / "guide.md", "# 扫地机器人\n\n月光滤网三个月更换。\n")
    assert runner.invoke(app, ["kb", "add", str(printers.parent)]).exit_code == 0
    second = runner.invoke(app, ["kb", "add", str(robots.parent)])
    assert second.exit_code == 0, second.output
    assert (
        f"名字 guide.md 已属于另一个文件（{printers.resolve()}），这个文件存为 robots/guide.md"
        in (second.output)
    )
    assert "新增 1 个文件，替换 0 个" in second.output and "删除 0 段" in second.output
    assert sources(data_dir) == {
        "guide.md": str(printers.resolve()),
        "robots/guide.md": str(robots.resolve()),
    }
    listed = runner.invoke(app, ["kb", "list"])
    assert "robots/guide.md" in listed.output and str(robots.resolve()) in listed.output


def test_kb_add_announces_a_replacement_and_asks_when_only_the_name_ties_it(
    data_dir: Path, tmp_path: Path
):
    guide = write(tmp_path / "old" / "guide.md", "# 指南\n\n保修一年。\n")
    runner.invoke(app, ["kb", "add", str(guide.parent)])
    write(guide, "# 指南\n\n保修两年。\n")
    updated = runner.invoke(app, ["kb", "add", str(guide.parent)])
    assert updated.exit_code == 0
    assert f"将替换 guide.md（{guide}）：文件改过；原来的 1 段删除" in updated.output
    assert "替换 1 个" in updated.output

    # Moved and changed: the same name is all that ties it to the stored document.
    moved = write(tmp_path / "new" / "guide.md", "# 指南\n\n保修三年。\n")
    guide.unlink()
    refused = runner.invoke(app, ["kb", "add", str(moved.parent)], input="n\n")
    assert refused.exit_code == 1
    assert f"它原来的文件 {guide.resolve()} 已经不在了，只能按同名认定是这个文件" in refused.output
    assert "已取消，什么也没有改动" in refused.output
    assert sources(data_dir) == {"guide.md": str(guide.resolve())}
    # No terminal to answer from (a script): no.
    assert runner.invoke(app, ["kb", "add", str(moved.parent)]).exit_code == 1
    accepted = runner.invoke(app, ["kb", "add", str(moved.parent), "--yes"])
    assert accepted.exit_code == 0 and "替换 1 个" in accepted.output
    assert sources(data_dir) == {"guide.md": str(moved.resolve())}


def test_kb_add_imports_the_good_files_and_names_each_one_left_out(data_dir: Path, tmp_path: Path):
    from tests.tools.test_ingest import corrupt_pdf

    folder = tmp_path / "docs"
    write(folder / "guide.md", "# 指南\n\n说明。\n")
    (folder / "坏.pdf").write_bytes(corrupt_pdf())
    (folder / "logo.png").write_bytes(b"\x89PNG")
    result = runner.invoke(app, ["kb", "add", str(folder)])
    assert result.exit_code == 1
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert "新增 1 个文件" in result.output and "跳过 1 个，没有导入 1 个" in result.output
    assert f"跳过 {folder / 'logo.png'}：不是能导入的格式" in result.output
    assert f"没有导入 {folder / '坏.pdf'}：PDF 文件已损坏或不是 PDF，无法读取" in result.output
    assert "1 个文件没有导入" in result.output
    assert list(sources(data_dir)) == ["guide.md"]


def test_kb_add_help_lists_every_format_it_reads(data_dir: Path):
    from tools.ingest import SUPPORTED_SUFFIXES

    result = runner.invoke(app, ["kb", "add", "--help"])
    assert result.exit_code == 0
    for suffix in SUPPORTED_SUFFIXES:
        assert f"（{suffix}" in result.output or f"、{suffix}" in result.output, suffix


def test_kb_search_searches_maxkb_when_the_service_does(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    from evals.fakes.maxkb import FIXTURE_KNOWLEDGE_ID, FakeMaxKB

    with FakeMaxKB() as maxkb:
        monkeypatch.setenv("QQRAG_KNOWLEDGE_BACKEND", "maxkb")
        monkeypatch.setenv("QQRAG_MAXKB_URL", maxkb.url)
        monkeypatch.setenv("QQRAG_MAXKB_TOKEN", maxkb.user_token)
        monkeypatch.setenv("QQRAG_MAXKB_KNOWLEDGE_IDS", FIXTURE_KNOWLEDGE_ID)
        monkeypatch.setenv("QQRAG_MAXKB_RETRIES", "0")
        get_settings.cache_clear()
        found = runner.invoke(app, ["kb", "search", "广三铁路在哪年建成？", "-k", "1"])
        assert len(requests := [r for r in maxkb.requests if r["path"].endswith("/hit_test")]) == 1
        assert requests[0]["json"]["query_text"] == "广三铁路在哪年建成？"
        maxkb.stop()
        runner.invoke(app, ["kb", "add", str(FIXTURES / "kb")])
        fallen = runner.invoke(app, ["kb", "search", "星尘打印机保修多久？", "-k", "1"])
        monkeypatch.setenv("QQRAG_MAXKB_FALLBACK_EMBEDDED", "false")
        get_settings.cache_clear()
        failed = runner.invoke(app, ["kb", "search", "星尘打印机保修多久？", "-k", "1"])
        embedded = runner.invoke(app, ["kb", "search", "星尘打印机保修多久？", "--kb", "default"])

    assert found.exit_code == 0 and "检索 MaxKB" in found.output
    assert "MaxKB · " in found.output and "广茂铁路" in found.output
    assert fallen.exit_code == 0 and "MaxKB 不可用，以下来自内置知识库" in fallen.output
    assert "stardust.md" in fallen.output
    assert failed.exit_code == 1 and "无法连接 MaxKB" in failed.output
    assert embedded.exit_code == 0 and "检索内置知识库 default" in embedded.output


def test_kb_search_shows_the_whole_passage_without_breaking_a_number(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    text = "月光机器人售后客服电话 4008123456，工作日九点到晚上九点接听，节假日照常服务，欢迎来电。"
    runner.invoke(app, ["kb", "add", str(write(tmp_path / "客服.md", f"# 客服\n\n{text}\n"))])
    for columns in ("200", "40", "33"):
        monkeypatch.setenv("COLUMNS", columns)
        result = runner.invoke(app, ["kb", "search", "客服电话", "-k", "1"])
        assert result.exit_code == 0
        # After the line naming the base searched and the hit's own line: the passage.
        lines = [line.strip() for line in result.output.splitlines()[2:]]
        assert "".join(lines).replace(" ", "") == text.replace(" ", "")
        assert any("4008123456" in line for line in lines), result.output
        assert all(cell_len(line) <= int(columns) - 3 for line in lines), result.output


def test_kb_remove_lists_asks_and_audits(data_dir: Path):
    from agent.audit import AuditLog

    runner.invoke(app, ["kb", "add", str(FIXTURES / "kb")])
    moonlight = runner.invoke(app, ["kb", "list"]).output
    missing = runner.invoke(app, ["kb", "remove", "moonlight.md", "nothing.md", "--yes"])
    assert missing.exit_code == 1 and "知识库 default 里没有文档 nothing.md" in missing.output
    assert "moonlight.md" in sources(data_dir)

    refused = runner.invoke(app, ["kb", "remove", "moonlight.md"], input="n\n")
    assert refused.exit_code == 1 and "将从知识库 default 删除：" in refused.output
    assert "moonlight.md（3 段，" in refused.output and "moonlight.md" in sources(data_dir)
    from tools.kb import document_id

    removed = runner.invoke(app, ["kb", "remove", document_id("moonlight.md")], input="y\n")
    assert removed.exit_code == 0 and "已删除 moonlight.md（3 段）" in removed.output
    assert list(sources(data_dir)) == ["stardust.md"] and document_id("moonlight.md") in moonlight
    log = AuditLog(data_dir / "audit.sqlite")
    try:
        (action,) = log.actions()
    finally:
        log.close()
    assert (action["via"], action["action"], action["kb"], action["target"]) == (
        "cli",
        "document.remove",
        "default",
        "moonlight.md",
    )
    assert action["detail"]["passages"] == 3 and action["actor"]


def test_tenant_add_warns_about_a_knowledge_base_without_documents(data_dir: Path):
    runner.invoke(app, ["kb", "add", str(FIXTURES / "kb"), "--kb", "docs"])
    added = runner.invoke(app, ["tenant", "add", "acme", "--kb", "docs", "--kb", "fqa"])
    assert added.exit_code == 0
    assert "注意：知识库 fqa 里还没有任何文档（名字写错了？）" in added.output
    assert "现有的知识库：docs" in added.output
    assert "知识库 docs 里" not in added.output
    # QQRAG_KB_NAME is filled by the service itself (the user guide) or served by MaxKB.
    assert "注意" not in runner.invoke(app, ["tenant", "add", "newco"]).output


def test_tenant_remove_revokes_its_keys_after_asking_and_audits(data_dir: Path):
    from agent.audit import AuditLog
    from agent.policy.tenants import TenantStore

    key = runner.invoke(app, ["key", "issue", "acme"]).output.strip().splitlines()[-1]
    refused = runner.invoke(app, ["tenant", "remove", "acme"], input="n\n")
    assert refused.exit_code == 1 and "并吊销它的 1 个有效密钥" in refused.output
    removed = runner.invoke(app, ["tenant", "remove", "acme", "--yes"])
    assert removed.exit_code == 0 and "已删除租户 acme，吊销密钥 1 个" in removed.output
    assert runner.invoke(app, ["tenant", "remove", "acme", "--yes"]).exit_code == 1
    store = TenantStore(data_dir / "tenants.sqlite")
    try:
        assert store.tenant("acme") is None and store.authenticate(key) is None
    finally:
        store.close()
    log = AuditLog(data_dir / "audit.sqlite")
    try:
        (action,) = log.actions()
    finally:
        log.close()
    assert (action["action"], action["target"], action["kb"]) == ("tenant.remove", "acme", None)
    assert len(action["detail"]["revoked_keys"]) == 1


def test_key_rotate_shows_the_new_key_once_and_revokes_the_old(data_dir: Path):
    from agent.audit import AuditLog
    from agent.policy.tenants import TenantStore, hash_key

    old = runner.invoke(app, ["key", "issue", "acme", "--label", "机器人"]).output.split()[-1]
    rotated = runner.invoke(app, ["key", "rotate", hash_key(old)[:8]])
    assert rotated.exit_code == 0, rotated.output
    new = rotated.output.strip().splitlines()[-1]
    assert new.startswith("qqrag-") and new != old
    assert f"已吊销旧密钥 {hash_key(old)[:12]}" in rotated.output
    store = TenantStore(data_dir / "tenants.sqlite")
    try:
        assert store.authenticate(old) is None
        principal = store.authenticate(new)
        assert principal is not None and principal.tenant == "acme"
        assert new not in runner.invoke(app, ["key", "list"]).output
    finally:
        store.close()
    assert runner.invoke(app, ["key", "rotate", old]).exit_code == 1
    runner.invoke(app, ["key", "revoke", new])
    log = AuditLog(data_dir / "audit.sqlite")
    try:
        revoke, rotate = log.actions()
    finally:
        log.close()
    assert (rotate["action"], rotate["target"]) == ("key.rotate", hash_key(old)[:12])
    assert rotate["detail"] == {"tenant": "acme", "new_key_id": hash_key(new)[:12]}
    assert (revoke["action"], revoke["target"]) == ("key.revoke", hash_key(new)[:12])


def test_config_shows_effective_settings(data_dir: Path):
    result = runner.invoke(app, ["config", "--json"])
    assert result.exit_code == 0
    shown = json.loads(result.output)
    assert shown["service"]["QQRAG_DATA_DIR"] == {
        "value": str(data_dir),
        "source": {"from": "environment", "variable": "QQRAG_DATA_DIR"},
    }


def test_config_stars_passwords_in_urls_and_secrets(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("QQRAG_REDIS_URL", "redis://:s3cret@10.0.0.5:6379/0")
    monkeypatch.setenv("QQRAG_POSTGRES_URL", "postgresql://qq:pa55@db:5432/qq")
    monkeypatch.setenv("QQRAG_MAXKB_API_KEY", "application-topsecret")
    get_settings.cache_clear()
    result = runner.invoke(app, ["config", "--json"])
    get_settings.cache_clear()  # the next test reads its own settings
    assert result.exit_code == 0
    for secret in ("s3cret", "pa55", "topsecret"):
        assert secret not in result.output
    shown = json.loads(result.output)["service"]
    assert shown["QQRAG_REDIS_URL"]["value"] == "redis://:***@10.0.0.5:6379/0"
    assert shown["QQRAG_POSTGRES_URL"]["value"] == "postgresql://qq:***@db:5432/qq"
    assert shown["QQRAG_MAXKB_API_KEY"]["value"] == "***"


def test_config_lists_the_bot_settings_with_their_sources_and_secrets_starred(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(
        "QQRAG_BOT_TIMEOUT=30\n"
        "QQRAG_CHAT_MODEL=qwen3:14b\n"
        "ONEBOT_ACCESS_TOKEN=onebot-secret\n"
        'QQ_BOTS=[{"id":"102","token":"","secret":"app-secret"}]\n'
    )
    monkeypatch.setenv("QQRAG_BOT_API_KEY", "qqrag-botkey")
    monkeypatch.setenv("OLLAMA_HOST", "gpu-box:11434")
    get_settings.cache_clear()
    result = runner.invoke(app, ["config"])
    as_json = runner.invoke(app, ["config", "--json"])
    get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    for secret in ("onebot-secret", "app-secret", "qqrag-botkey"):
        assert secret not in result.output and secret not in as_json.output
    lines = result.output.splitlines()
    assert "QQRAG_BOT_TIMEOUT=30.0  # .env" in lines
    assert "QQRAG_BOT_API_KEY=***  # 环境变量" in lines
    assert "QQRAG_BOT_SERVICE_URL=http://127.0.0.1:8000  # 默认值" in lines
    assert "ONEBOT_ACCESS_TOKEN=***  # .env" in lines
    assert "QQRAG_CHAT_MODEL=qwen3:14b  # .env" in lines
    assert "QQRAG_OLLAMA_URL=http://gpu-box:11434  # 环境变量（OLLAMA_HOST）" in lines
    bot = json.loads(as_json.output)["bot"]
    # Every setting of the plugin, NoneBot's HOST and PORT, and the adapters' settings.
    assert {"HOST", "PORT", "DRIVER", "QQ_BOTS", "QQRAG_BOT_NICKNAMES"} <= set(bot)
    assert bot["QQ_BOTS"]["value"][0]["id"] == "102"
    assert bot["QQ_BOTS"]["value"][0]["secret"] == "***"
    assert bot["QQRAG_BOT_TIMEOUT"]["source"] == {"from": ".env", "variable": "QQRAG_BOT_TIMEOUT"}


def test_a_mistyped_setting_in_the_dotenv_file_is_named_with_the_right_one(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("QQRAG_BOT_TIMOUT=30\nQQRAG_NOTHING_LIKE_IT=1\n")
    result = runner.invoke(app, ["config"])
    assert result.exit_code == 0
    assert (
        "注意：.env 里的 QQRAG_BOT_TIMOUT 不是 qqrag 的配置项，不会生效，是不是 QQRAG_BOT_TIMEOUT？"
        in result.stderr
    )
    assert "注意：.env 里的 QQRAG_NOTHING_LIKE_IT 不是 qqrag 的配置项" in result.stderr


def test_chat_shows_each_node_and_keeps_the_conversation(data_dir: Path, fake_ollama: FakeOllama):
    from agent.audit import AuditLog

    session = "月光扫地机器人的续航有多久？\n那它售价多少？\n/reset\n/quit\n"
    result = runner.invoke(app, ["chat", "--user", "tester"], input=session)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "· classify intent=knowledge" in out
    # No rewrite by default: the search carries the first question along.
    assert "query=月光扫地机器人的续航有多久？ 那它售价多少？" in out
    assert "· rerank" in out and "· cite_check" in out
    assert "月光扫地机器人售价 1299 元" in out
    assert "[1] 月光扫地机器人 › 月光扫地机器人的价格 · kb/moonlight.md" in out
    assert "对话记录已清空" in out
    # The same turn path as the service's: every turn is audited under the CLI's thread.
    log = AuditLog(data_dir / "audit.sqlite")
    try:
        turns = log.turns(None, limit=10)
    finally:
        log.close()
    assert {row["thread_id"] for row in turns} == {"default:cli:private:tester"}
    assert len(turns) == 3


def test_tenants_keys_and_gaps(data_dir: Path):
    from agent.audit import AuditLog
    from agent.policy.tenants import TenantStore

    added = runner.invoke(app, ["tenant", "add", "acme", "--kb", "docs", "--kb", "faq"])
    assert added.exit_code == 0 and "知识库：docs, faq" in added.output
    assert runner.invoke(app, ["tenant", "add", "acme"]).exit_code == 1

    issued = runner.invoke(app, ["key", "issue", "newco", "--label", "机器人"])
    assert issued.exit_code == 0 and "已创建租户 newco" in issued.output
    key = issued.output.strip().splitlines()[-1]
    assert key.startswith("qqrag-")
    store = TenantStore(data_dir / "tenants.sqlite")
    assert store.authenticate(key) is not None
    key_id = store.list_keys("newco")[0].key_id
    store.close()

    listed = runner.invoke(app, ["key", "list"])
    assert key_id in listed.output and "机器人" in listed.output and key not in listed.output
    assert runner.invoke(app, ["key", "revoke", key_id[:8]]).exit_code == 0
    assert runner.invoke(app, ["key", "revoke", key_id[:8]]).exit_code == 1
    assert "已吊销" in runner.invoke(app, ["key", "list"]).output
    assert "acme" in runner.invoke(app, ["tenant", "list"]).output

    linked = runner.invoke(app, ["tenant", "add", "docsco", "--link-domain", "Docs.Example.com"])
    assert linked.exit_code == 0 and "保留这些域名的链接：docs.example.com" in linked.output
    assert "docs.example.com" in runner.invoke(app, ["tenant", "list"]).output
    changed = runner.invoke(
        app, ["tenant", "links", "acme", "--link-domain", "a.example", "--link-domain", "b.example"]
    )
    assert changed.exit_code == 0 and "a.example, b.example" in changed.output
    assert "a.example, b.example" in runner.invoke(app, ["tenant", "links", "acme"]).output
    cleared = runner.invoke(app, ["tenant", "links", "acme", "--clear"])
    assert cleared.exit_code == 0 and "自己没有设置保留链接的域名" in cleared.output
    assert runner.invoke(app, ["tenant", "links", "nobody"]).exit_code == 1
    bad = runner.invoke(app, ["tenant", "links", "acme", "--link-domain", "not a domain"])
    assert bad.exit_code == 1 and "不是域名" in bad.output

    log = AuditLog(data_dir / "audit.sqlite")
    for question in ("量子计算机怎么买？", "量子计算机怎么买？", "火星车多少钱？"):
        log.record_turn(
            {"tenant": "acme", "outcome": "not_found", "query": question, "question": question}
        )
    log.record_turn(
        {
            "tenant": "acme",
            "outcome": "not_found",
            "query": "端口？ 怎么改？",
            "question": "怎么改？",
        }
    )
    log.close()
    shown = runner.invoke(app, ["gaps"])
    assert shown.exit_code == 0
    assert shown.output.index("量子计算机怎么买？") < shown.output.index("火星车多少钱？")
    # The user's own words, and what was searched for them where that differs.
    assert "问题" in shown.output and "怎么改？" in shown.output
    assert "端口？ 怎么改？" in shown.output and shown.output.count("火星车多少钱？") == 1
    assert "共 3 个知识缺口" in shown.output


def test_eval_runs_a_suite_against_its_baseline(data_dir: Path, tmp_path: Path):
    result = runner.invoke(app, ["eval", "smoke", "--no-progress", "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert "没有回归" in result.output
    assert (tmp_path / "r" / "smoke.default.html").is_file()


def test_version_is_the_installed_package_version():
    from importlib.metadata import version

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"qqrag {version('qqrag')}"


def qqrag(
    *args: str, env: dict[str, str], cwd: Path, timeout: float = 60
) -> subprocess.CompletedProcess:
    """`qqrag …` in a child process, as an operator runs it: with only `env`'s settings."""
    inherited = {k: v for k, v in os.environ.items() if not k.upper().startswith("QQRAG_")}
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", *args],
        env={**inherited, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_serve_with_a_bad_setting_says_so_in_one_line_and_exits_2(tmp_path: Path):
    result = qqrag("serve", env={"QQRAG_PORT": "abc"}, cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        "配置错误：QQRAG_PORT 要是整数，现在是“abc”。请改正环境变量 QQRAG_PORT 后再运行。"
    ]
    assert not (tmp_path / "data").exists()  # nothing was started


def test_serve_on_a_taken_port_exits_3_at_once_naming_the_setting(tmp_path: Path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {
            "QQRAG_PORT": str(port),
            "QQRAG_OLAMA_URL": "http://gpu-box:11434",  # mistyped: warned about, then ignored
            "QQRAG_DATA_DIR": str(tmp_path / "data"),
            "QQRAG_DEFAULT_DOCS": str(FIXTURES / "kb"),
        }
        started = time.monotonic()
        result = qqrag("serve", env=env, cwd=tmp_path)
    assert result.returncode == 3
    assert time.monotonic() - started < 15  # before the start-up, not after it
    assert not (tmp_path / "data").exists()
    lines = result.stderr.splitlines()
    assert lines == [
        "注意：环境变量 QQRAG_OLAMA_URL 不是 qqrag 的配置项，不会生效，是不是 QQRAG_OLLAMA_URL？",
        f"端口 {port} 已被占用（127.0.0.1:{port}），服务没有启动：停掉占用它的程序，"
        f"或把 QQRAG_PORT（或 qqrag serve --port）改成别的端口，如 {port + 1}。",
    ]


def test_serve_exits_4_when_the_service_fails_to_start(tmp_path: Path):
    env = {
        "QQRAG_PORT": str(free_port()),
        "QQRAG_DATA_DIR": str(tmp_path / "data"),
        "QQRAG_DEFAULT_DOCS": str(FIXTURES / "kb"),
        "QQRAG_CHECKPOINTER": "postgres",
        "QQRAG_POSTGRES_URL": "postgresql://qqrag@127.0.0.1:9/qqrag",  # nothing listens there
        "QQRAG_POSTGRES_TIMEOUT": "1",
    }
    result = qqrag("serve", env=env, cwd=tmp_path)
    assert result.returncode == 4
    assert "QQRAG_POSTGRES_URL" in result.stderr
    assert result.stderr.splitlines()[-1] == "qqrag 服务启动时出错，没有启动：原因见上面的日志。"
