"""`qqrag chat`'s views of a turn: the traced panels and the JSON lines, over the service's own
runtime with a scripted model, and the real command against the fake Ollama."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage
from langchain_core.messages.ai import UsageMetadata
from rich.console import Console

from agent import prompts, runtime
from agent.chat import View, run_chat
from agent.context import Context
from agent.policy.tenants import Principal
from agent.services import Services
from agent.settings import Settings, get_settings
from evals.fakes.ollama import FakeOllama
from graphs.qa import build
from tests.conftest import FIXTURES, ScriptedModels

PRICE = "星尘打印机标准版售价 1999 元[1]。"
UNSUPPORTED = "星尘打印机可以打印金属零件[1]。"
PRINCIPAL = Principal(tenant="default", role="admin", key_id="cli")

Chat = Callable[[list[str], View], Awaitable[str]]


@pytest.fixture
def data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("QQRAG_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("QQRAG_DEFAULT_DOCS", str(FIXTURES / "kb"))
    get_settings.cache_clear()
    return tmp_path / "data"


@pytest.fixture
def chat(
    data_dir: Path,
    models: ScriptedModels,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Chat:
    """`qqrag chat` in this process, its runtime's chat models scripted; returns its output."""
    real = runtime.services_from_settings

    def scripted(settings: Settings) -> Services:
        services = real(settings)
        services.chat_models = models
        return services

    monkeypatch.setattr(runtime, "services_from_settings", scripted)

    async def talk(lines: list[str], view: View) -> str:
        typed: Iterator[str] = iter(lines)

        def read(*_: object) -> str:
            try:
                return next(typed)
            except StopIteration:
                raise EOFError from None

        monkeypatch.setattr("builtins.input", read)
        console = Console(record=True, width=200)
        monkeypatch.setattr(console, "input", read)
        await run_chat(build, PRINCIPAL, "tester", Context(), console, view)
        return console.export_text() + capsys.readouterr().out

    return talk


def reply(content: str, prompt: int, completion: int, **extra: Any) -> AIMessage:
    usage = UsageMetadata(
        input_tokens=prompt, output_tokens=completion, total_tokens=prompt + completion
    )
    return AIMessage(content=content, usage_metadata=usage, **extra)


def script_two_turns(models: ScriptedModels) -> None:
    """A first answer for the history, then a draft with one unsupported sentence, rejected
    and written again."""
    models.say(
        "星尘打印机整机保修两年[1]。",
        reply(f"<think>先看资料</think>{PRICE}{UNSUPPORTED}", 900, 40),
        reply(PRICE, 980, 12),
    )


QUESTIONS = ["星尘打印机保修多久？", "星尘打印机售价多少？"]


async def test_json_lines_hold_the_prompt_the_output_the_draft_and_the_check(
    chat: Chat, models: ScriptedModels
):
    script_two_turns(models)
    lines = [json.loads(line) for line in (await chat(QUESTIONS, View(json=True))).splitlines()]
    second = lines[lines.index(next(e for e in lines if e["event"] == "result")) + 1 :]
    assert [e.get("node", e["event"]) for e in second] == [
        *("classify", "retrieve", "rerank", "answer", "cite_check", "answer", "cite_check"),
        "result",
    ]
    assert all(isinstance(e["seconds"], float) for e in second[:-1])
    answer, check = second[3], second[4]
    (call,) = answer["calls"]
    system, asked, answered, question = call["messages"]
    assert system == {"role": "system", "content": prompts.render("answer")}
    assert (asked, answered) == (
        {"role": "user", "content": "星尘打印机保修多久？"},
        {"role": "assistant", "content": "星尘打印机整机保修两年[1]。"},
    )
    assert "<context>\n[1] 星尘打印机 › 价格与购买（来源：kb/stardust.md）\n" in question["content"]
    assert question["content"].endswith("<question>\n星尘打印机售价多少？\n</question>")
    assert call["output"] == f"<think>先看资料</think>{PRICE}{UNSUPPORTED}"
    assert answer["draft"] == f"{PRICE}{UNSUPPORTED}"
    assert call["tokens"] == answer["tokens"] == {"prompt": 900, "completion": 40}
    assert check["verdict"]["removed"] == [
        {
            "text": "星尘打印机可以打印金属零件。",
            "reason": "所引 [1] 的支持度 0.00，其他资料也不支持（最高支持度 0.00，要求 0.6）",
        }
    ]
    # Passage texts only on request (--passages).
    assert "text" not in second[2]["evidence"][0]
    result = second[-1]
    assert result["answer"] == PRICE and result["tokens"] == 900 + 40 + 980 + 12
    assert result["citations"][0]["title"] == "星尘打印机 › 价格与购买"


async def test_the_traced_view_shows_each_node_in_panels(chat: Chat, models: ScriptedModels):
    script_two_turns(models)
    out = await chat(QUESTIONS, View(trace=True))
    assert "answer · " in out and "提示 900 + 生成 40 tokens" in out
    # The system prompt folded, the evidence and the question whole.
    answer_prompt = prompts.render("answer")
    assert answer_prompt.splitlines()[0] in out and answer_prompt.splitlines()[-1] not in out
    assert "--full 显示全部" in out
    assert "[1] 星尘打印机 › 价格与购买（来源：kb/stardust.md）" in out
    assert "<think>先看资料</think>" in out
    assert "草稿（引用检查前）" in out
    assert "删除：星尘打印机可以打印金属零件。" in out
    assert "原因：所引 [1] 的支持度 0.00，其他资料也不支持" in out
    assert "要求重新生成" in out


async def test_full_shows_the_whole_system_prompt_and_passages(chat: Chat, models: ScriptedModels):
    models.say(PRICE)
    out = await chat(["星尘打印机售价多少？"], View(full=True))
    assert prompts.render("answer").splitlines()[-1] in out
    assert "--full 显示全部" not in out
    assert "两个版本都可以在星尘科技官方商城购买，下单后三天内发货。" in out


def test_qqrag_chat_json_against_the_fake_ollama(tmp_path: Path):
    """The installed command, one question on its stdin, every line of its stdout JSON."""
    with FakeOllama() as fake:
        env = os.environ | {
            "QQRAG_DATA_DIR": str(tmp_path / "data"),
            "QQRAG_OLLAMA_URL": fake.url,
            "QQRAG_DEFAULT_DOCS": str(FIXTURES / "kb"),
        }
        done = subprocess.run(
            [str(Path(sys.executable).with_name("qqrag")), "chat", "--json", "--passages"],
            input="星尘打印机支持哪些耗材？\n",
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=True,
        )
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [e.get("node", e["event"]) for e in lines] == [
        *("classify", "retrieve", "rerank", "answer", "cite_check"),
        "result",
    ]
    answer = lines[3]
    (call,) = answer["calls"]
    assert call["messages"][0] == {"role": "system", "content": prompts.render("answer")}
    assert "<question>\n星尘打印机支持哪些耗材？\n</question>" in call["messages"][-1]["content"]
    assert call["output"] == answer["draft"] == lines[-1]["answer"]
    assert answer["tokens"]["prompt"] > 0 and answer["tokens"]["completion"] > 0
    assert lines[2]["evidence"][0]["text"].startswith("星尘打印机支持 PLA 和 PETG 两种耗材")
    assert lines[-1]["answer"] == "星尘打印机支持 PLA 和 PETG 两种耗材，耗材直径为 1.75 毫米[1]。"
