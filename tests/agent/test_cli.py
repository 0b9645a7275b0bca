"""The `qqrag` command, driven through typer's runner with a real data folder."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent.cli import app
from agent.settings import get_settings
from evals.fakes.ollama import FakeOllama
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


def test_config_shows_effective_settings(data_dir: Path):
    result = runner.invoke(app, ["config"])
    assert result.exit_code == 0
    assert json.loads(result.output)["data_dir"] == str(data_dir)


def test_chat_shows_each_node_and_keeps_the_conversation(data_dir: Path, fake_ollama: FakeOllama):
    session = "月光扫地机器人的续航有多久？\n那它售价多少？\n/reset\n/quit\n"
    result = runner.invoke(app, ["chat", "--thread", "cli:test"], input=session)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "· classify intent=knowledge" in out
    assert "query=月光扫地机器人售价多少？" in out
    assert "· rerank" in out and "· cite_check" in out
    assert "月光扫地机器人售价 1299 元" in out
    assert "[1] 月光扫地机器人 › 月光扫地机器人的价格 · kb/moonlight.md" in out
    assert "对话已清空" in out
