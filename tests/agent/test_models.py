"""The real ChatOllama, through the graph, against the fake Ollama."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from langchain_core.messages import AIMessage

from agent.context import Context
from agent.models import OllamaChatModels, message_text, usage_tokens
from agent.services import Services
from agent.turns import QAGraph
from evals.fakes.ollama import FakeOllama, Fault
from tests.conftest import run_turn


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOllama]:
    with FakeOllama() as server:
        yield server


@pytest.fixture
def ollama(services: Services, fake: FakeOllama) -> FakeOllama:
    fake.reset()
    services.settings.ollama_url = fake.url
    services.chat_models = OllamaChatModels(services.settings)
    return fake


async def test_thinking_is_requested_but_never_shown(graph: QAGraph, ollama: FakeOllama):
    result = await run_turn(graph, "m1", "星尘打印机保修多久？", Context(thinking=True))
    assert result.answer == "星尘打印机整机保修两年，喷头等易损件保修六个月[1]。"
    assert result.tokens > 0 and result.model_calls == 1
    request = ollama.calls("/api/chat")[0]
    assert request["think"] is True
    assert request["tools"][0]["function"]["name"] == "search_knowledge"


async def test_classify_asks_for_a_json_schema_with_thinking_off(
    graph: QAGraph, ollama: FakeOllama
):
    await run_turn(graph, "m2", "星尘打印机保修多久？", Context(rewrite="model"))
    await run_turn(graph, "m2", "那它支持哪些耗材？", Context(rewrite="model"))
    classify = [c for c in ollama.calls("/api/chat") if c.get("format")]
    assert len(classify) == 1
    assert classify[0]["think"] is False
    assert classify[0]["format"]["properties"]["intent"]["enum"] == [
        "knowledge",
        "chitchat",
        "command",
        "blocked",
    ]


async def test_error_line_inside_the_stream_degrades_the_answer(graph: QAGraph, ollama: FakeOllama):
    ollama.fail_next(Fault.STREAM_ERROR_LINE)
    result = await run_turn(graph, "m3", "星尘打印机保修多久？", Context())
    assert result.degraded is True
    assert "星尘打印机整机保修两年" in result.answer


async def test_malformed_classification_falls_back_and_the_turn_still_answers(
    graph: QAGraph, ollama: FakeOllama
):
    await run_turn(graph, "m4", "星尘打印机保修多久？", Context(rewrite="model"))
    ollama.fail_next(Fault.MALFORMED_JSON)
    result = await run_turn(graph, "m4", "那它支持哪些耗材？", Context(rewrite="model"))
    assert result.degraded is True
    assert result.query == "星尘打印机保修多久？ 那它支持哪些耗材？"
    assert result.citations


async def test_history_mode_sends_no_classify_request(graph: QAGraph, ollama: FakeOllama):
    context = Context(rewrite="history")
    await run_turn(graph, "m5", "星尘打印机保修多久？", context)
    result = await run_turn(graph, "m5", "那它支持哪些耗材？", context)
    chats = ollama.calls("/api/chat")
    assert [c for c in chats if c.get("format")] == []
    assert result.query == "星尘打印机保修多久？ 那它支持哪些耗材？"
    assert result.citations[0]["title"] == "星尘打印机 › 打印材料"
    follow_up = chats[1]["messages"]
    assert [m["role"] for m in follow_up] == ["system", "user", "assistant", "user"]
    assert follow_up[-1]["content"].endswith("<question>\n那它支持哪些耗材？\n</question>")


def test_message_helpers():
    reply = AIMessage(
        content="<think>x</think> 答案 ",
        usage_metadata={"input_tokens": 3, "output_tokens": 4, "total_tokens": 7},
    )
    assert message_text(reply) == "答案"
    assert usage_tokens(reply) == 7
    assert usage_tokens(AIMessage(content="")) == 0


async def test_breaker_degrades_at_once_during_an_outage_then_recovers(
    graph: QAGraph, ollama: FakeOllama, services: Services
):
    import asyncio

    from agent.models import ollama_breaker

    outages: list[str] = []
    services.breaker = ollama_breaker(failures=2, reset_after=0.3)
    services.on_outage = outages.append
    ollama.fail_next(Fault.HTTP_500, times=2)
    for turn in range(3):
        result = await run_turn(graph, f"b{turn}", "星尘打印机保修多久？", Context())
        assert result.degraded is True
    # The third turn did not wait for Ollama: the open circuit failed it at once.
    assert len(ollama.calls("/api/chat")) == 2
    assert outages == ["ollama", "ollama", "ollama"]
    await asyncio.sleep(0.35)
    recovered = await run_turn(graph, "b3", "星尘打印机保修多久？", Context())
    assert recovered.degraded is False
