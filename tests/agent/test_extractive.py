"""The degraded answer (no model): whole sentences and code blocks, no markup, only relevant
passages cited; run on the guide's own questions with Ollama down."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from agent.checkpoints import LoopSqliteSaver
from agent.context import Context
from agent.extractive import extractive_answer, whole_sentences
from agent.services import Services, set_services
from agent.settings import Settings
from agent.turns import QAGraph, TurnResult
from evals.suite import load_suite
from graphs.qa import build
from tests.conftest import ScriptedModels, run_turn
from tools.base import Passage
from tools.kb import EmbeddedKB

NOTICE = "（AI 模型暂时不可用，以下是知识库中最相关的原文摘录）"
NOT_FOUND = "知识库里没有找到"
_MARKUP = re.compile(r"```|`|\*\*|^\s*[-*+] |^\s*#|\|", re.MULTILINE)
_PAIRS = [("“", "”"), ("（", "）"), ("(", ")"), ("「", "」"), ("《", "》")]


def passage(pid: str, title: str, text: str) -> Passage:
    return Passage(id=pid, title=title, source=f"docs/{pid}.md", text=text, score=0.8, kb="t")


INSTALL = passage(
    "install",
    "安装与启动 › 安装并启动 qqrag 的命令",
    "在终端中依次执行以下命令即可安装并启动 qqrag 服务：\n\n```bash\n"
    "git clone <仓库地址> qqrag && cd qqrag\npip install -e . && qqrag serve\n```\n\n"
    "以后再启动时执行 `qqrag serve`。",
)


def test_a_lead_in_brings_its_whole_code_block_without_fences():
    answer = extractive_answer("安装 qqrag 要执行什么命令？", [INSTALL], threshold=0.3)
    assert answer.splitlines() == [
        NOTICE,
        "在终端中依次执行以下命令即可安装并启动 qqrag 服务[1]：",
        "git clone <仓库地址> qqrag && cd qqrag",
        "pip install -e . && qqrag serve",
    ]


def test_a_code_block_nothing_introduces_is_quoted_under_its_heading():
    code = passage("pull", "部署 › 下载 Ollama 模型", "```bash\nollama pull qwen3:8b\n```")
    answer = extractive_answer("怎么下载 Ollama 模型？", [code])
    assert answer.splitlines()[1:] == ["下载 Ollama 模型[1]：", "ollama pull qwen3:8b"]


def test_list_markers_backticks_links_and_table_pipes_are_dropped():
    fields = passage(
        "fields",
        "HTTP 接口 › 响应字段",
        "qqrag 的响应是 JSON，字段如下：\n\n- `answer`：回答正文。\n- `degraded`：**降级**时为 true，"
        "见[降级模式](usage.md)。",
    )
    table = passage(
        "ports",
        "配置项 › 默认值速查",
        "| 配置项 | 默认值 |\n|---|---|\n| QQRAG_PORT | 8000 |\n| QQRAG_HOST | 127.0.0.1 |",
    )
    answer = extractive_answer("响应字段 degraded 是什么？", [fields])
    assert answer.splitlines()[1:] == [
        "qqrag 的响应是 JSON，字段如下[1]：",
        "· answer：回答正文。",
        "· degraded：降级时为 true，见降级模式。",
    ]
    assert extractive_answer("QQRAG_PORT 默认值是多少？", [table]).splitlines()[1:] == [
        "QQRAG_PORT：默认值 8000[1]。"
    ]


def test_numbered_steps_keep_their_numbers():
    steps = passage(
        "steps",
        "部署 › 升级 qqrag",
        "升级 qqrag 的步骤：\n\n1. 停止 `qqrag serve`。\n2. 执行 git pull。\n\n---\n\n升级后重启即可。",
    )
    assert extractive_answer("怎么升级 qqrag？", [steps]).splitlines()[1:] == [
        "升级 qqrag 的步骤[1]：",
        "1. 停止 qqrag serve。",
        "2. 执行 git pull。",
    ]


def test_sentences_are_never_cut_inside_quotation_marks_or_brackets():
    text = "提问太频繁时，qqrag 回复“你提问太频繁了，请 N 秒后再试。”（整个群太频繁时是“本群提问太频繁了。”）。额度按天计算。"
    assert whole_sentences(text) == [
        "提问太频繁时，qqrag 回复“你提问太频繁了，请 N 秒后再试。”（整个群太频繁时是“本群提问太频繁了。”）。",
        "额度按天计算。",
    ]
    assert whole_sentences('响应中 "degraded. yes" 为 true。版本 3.14 可用。') == [
        '响应中 "degraded. yes" 为 true。',
        "版本 3.14 可用。",
    ]


def test_a_lead_in_whose_block_is_elsewhere_is_no_quote():
    cut = passage("cut", "运维 › 链接", "租户的域名用 qqrag tenant links 查看或修改：")
    answer = extractive_answer("怎么查看租户的链接域名？", [cut, INSTALL], question="链接域名？")
    assert answer.startswith(NOT_FOUND)


def test_only_passages_about_as_relevant_as_the_best_are_cited():
    port = passage("port", "安装 › 默认端口", "qqrag 服务默认监听 8000 端口。")
    writing = passage(
        "writing", "知识库 › 编写文档", "标题写具体，例如“默认端口与监听地址”，不要写“其他”。"
    )
    answer = extractive_answer("qqrag 服务默认监听哪个端口？", [port, writing], threshold=0.3)
    assert answer.splitlines()[1:] == ["qqrag 服务默认监听 8000 端口[1]。"]


def test_weak_evidence_is_not_found_rather_than_quoted():
    # The passage as a whole clears the gate (it names most of the question's terms), but no
    # sentence of it does: quoting one would cite what does not answer.
    spread = passage(
        "spread",
        "杂项",
        "星尘打印机有网页控制台。机器人默认回复很快。端口可以在设置里看到。",
    )
    answer = extractive_answer(
        "星尘打印机的机器人默认端口是多少？", [spread], question="它的端口？", threshold=0.6
    )
    assert (
        answer == "知识库里没有找到和“它的端口？”相关的内容。可以换个说法再问，或请管理员补充资料。"
    )


# —— the guide's own questions, Ollama down ——


@pytest.fixture(scope="module")
def guide_kb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedKB]:
    """The smoke suite's knowledge base: the user guide (docs/) and its notice."""
    kb = EmbeddedKB(tmp_path_factory.mktemp("guide") / "kb.sqlite", "guide")
    for path in load_suite("smoke").knowledge.paths:
        kb.add_path(path)
    yield kb
    kb.close()


@pytest.fixture
async def ollama_down(guide_kb: EmbeddedKB, tmp_path: Path) -> AsyncIterator[QAGraph]:
    """The graph over the guide with every model call failing as an unreachable Ollama does."""
    models = ScriptedModels()
    models.say(*[httpx.ConnectError("All connection attempts failed")] * 100)
    settings = Settings(data_dir=tmp_path, ollama_url="http://127.0.0.1:9", _env_file=None)  # type: ignore[call-arg]
    set_services(Services(settings=settings, knowledge=guide_kb, chat_models=models))
    try:
        async with LoopSqliteSaver.open(tmp_path / "checkpoints.sqlite") as saver:
            yield build(saver)
    finally:
        set_services(None)


def assert_readable(result: TurnResult) -> None:
    """No Markdown a QQ user would see as literal characters, no quote cut mid-pair."""
    assert not _MARKUP.search(result.answer), result.answer
    for line in result.answer.splitlines():
        for left, right in _PAIRS:
            assert line.count(left) == line.count(right), line
        assert line.count('"') % 2 == 0, line


async def test_every_smoke_question_gets_a_readable_degraded_answer(ollama_down: QAGraph):
    for case in load_suite("smoke").cases:
        for turn in case.turns:
            if turn.expect.intent != "knowledge":
                continue
            result = await run_turn(ollama_down, case.id, turn.text, Context())
            assert_readable(result)
            if turn.expect.refuse:
                assert result.answer.startswith(NOT_FOUND) and not result.citations
            else:
                assert result.degraded and result.answer.startswith(NOTICE), result.answer


@pytest.mark.parametrize(
    ("question", "whole", "relevant"),
    [
        (
            "安装 qqrag 要执行什么命令？",
            [
                "git clone <仓库地址> qqrag && cd qqrag",
                "python3 -m venv .venv && . .venv/bin/activate && pip install -e . && qqrag serve",
            ],
            {"安装与启动 › 安装并启动 qqrag 的命令"},
        ),
        (
            "qqrag 服务默认监听哪个端口？",
            ["qqrag 服务默认监听 http://127.0.0.1:8000，也就是只接受本机访问、端口 8000["],
            {
                "安装与启动 › qqrag 默认端口与监听地址",
                "配置项 › QQRAG_HOST 与 QQRAG_PORT：监听地址与端口",
            },
        ),
        (
            "Ollama 连不上的时候 qqrag 还能回答吗？",
            ['响应中 "degraded" 为 true'],
            {
                '常见问题与排错 › Ollama 连不上，回答中 "degraded" 为 true',
                "使用 qqrag › qqrag 连续调用 Ollama 失败后直接降级",
                "使用 qqrag › qqrag 降级模式（Ollama 不可用时）",
            },
        ),
        (
            "qqrag 的数据默认保存在哪里？",
            ["知识库是 data/kb.sqlite，对话记录是 data/checkpoints.sqlite"],
            {"安装与启动 › qqrag 数据目录 data/"},
        ),
    ],
)
async def test_degraded_answers_quote_whole_commands_and_cite_only_relevant_passages(
    ollama_down: QAGraph, question: str, whole: list[str], relevant: set[str]
):
    result = await run_turn(ollama_down, "t", question, Context())
    assert result.degraded
    assert_readable(result)
    for text in whole:
        assert text in result.answer, result.answer
    cited = {c["title"] for c in result.citations}
    assert cited and cited <= relevant, cited
