from typing import Any

import pytest
from langchain_core.messages import AIMessage
from langchain_core.messages.ai import UsageMetadata

from agent import prompts, trace
from agent.context import Context
from agent.turns import QAGraph, ThinkFilter, stream_turn, summarize_update, turn_config
from tests.conftest import ScriptedModels, run_turn

PRICE = "星尘打印机标准版售价 1999 元[1]。"


@pytest.mark.parametrize(
    ("chunks", "visible"),
    [
        (["答案"], "答案"),
        (["<think>想一想</think>答案"], "答案"),
        (["<thi", "nk>想", "一想</th", "ink>答", "案"], "答案"),
        (["a<", "b>c"], "a<b>c"),
        (["<think>没有结束"], ""),
    ],
)
def test_think_filter(chunks: list[str], visible: str):
    stream = ThinkFilter()
    assert "".join(stream.feed(c) for c in chunks) == visible


def test_summarize_update_keeps_what_a_prompt_engineer_looks_at():
    passage = {
        "id": "p1",
        "title": "T",
        "source": "s",
        "text": "long text",
        "score": 0.5,
        "kb": "k",
    }
    summary = summarize_update("rerank", {"ranked": [passage], "evidence": []})
    assert summary == {
        "node": "rerank",
        "ranked": [{"id": "p1", "title": "T", "score": 0.5}],
        "evidence": [],
    }
    assert summarize_update("classify", {"intent": "knowledge", "query": "q", "draft": ""}) == {
        "node": "classify",
        "intent": "knowledge",
        "query": "q",
    }


async def test_the_result_is_the_stored_state_of_the_turn(graph: QAGraph, models: ScriptedModels):
    # A first turn, then one whose draft fails the citation check and is written again: the
    # result, gathered from the nodes' updates, must match the checkpointed state exactly.
    models.say("星尘打印机整机保修两年[1]。")
    await run_turn(graph, "r", "星尘打印机保修多久？", Context())
    models.say("星尘打印机售价 999 元[1]。", "星尘打印机标准版售价 1999 元[1]。")
    result = await run_turn(graph, "r", "星尘打印机售价多少？", Context())

    state = (await graph.aget_state(turn_config("r"))).values
    assert result.answer == "星尘打印机标准版售价 1999 元[1]。"
    for name in ("answer", "citations", "intent", "query", "degraded", "verdict", "evidence"):
        assert getattr(result, name) == state[name], name
    assert (result.candidates, result.ranked) == (state["candidates"], state["ranked"])
    assert (result.model_calls, result.tokens) == (state["model_calls"], state["tokens"])
    assert result.model_calls == 2


async def traced_events(
    graph: QAGraph, thread: str, text: str, context: Context
) -> list[dict[str, Any]]:
    events = [e async for e in stream_turn(graph, thread, text, context, tokens=False)]
    return [payload for kind, payload in events if kind == "node"]


def reply(content: str, prompt: int, completion: int, **extra: Any) -> AIMessage:
    usage = UsageMetadata(
        input_tokens=prompt, output_tokens=completion, total_tokens=prompt + completion
    )
    return AIMessage(content=content, usage_metadata=usage, **extra)


async def test_a_traced_turn_shows_what_every_node_sent_and_got(
    graph: QAGraph, models: ScriptedModels
):
    models.say("星尘打印机整机保修两年[1]。")
    await run_turn(graph, "tr", "星尘打印机保修多久？", Context())
    models.say(
        reply(
            "<think>先看资料</think>星尘打印机标准版售价 1999 元[1]。星尘打印机可以打印金属零件[1]。",
            900,
            40,
            additional_kwargs={"reasoning_content": "用户问价格"},
        ),
        reply(PRICE, 980, 12),
    )
    context = Context(trace=True)
    events = await traced_events(graph, "tr", "星尘打印机售价多少？", context)
    nodes = [e["node"] for e in events]
    assert nodes == [
        "classify",
        "retrieve",
        "rerank",
        "answer",
        "cite_check",
        "answer",
        "cite_check",
    ]
    assert all(isinstance(e["seconds"], float) for e in events)
    rerank = events[2]
    assert rerank["evidence"][0]["text"].startswith("星尘打印机标准版售价 1999 元")

    first, check, second = events[3], events[4], events[5]
    (call,) = first["calls"]
    roles = [m["role"] for m in call["messages"]]
    assert roles == ["system", "user", "assistant", "user"]
    system, asked, answered, question = call["messages"]
    assert system["content"] == prompts.render("answer")
    assert (asked["content"], answered["content"]) == (
        "星尘打印机保修多久？",
        "星尘打印机整机保修两年[1]。",
    )
    assert question["content"].startswith("<context>\n[1] 星尘打印机 › 价格与购买")
    assert question["content"].endswith("<question>\n星尘打印机售价多少？\n</question>")
    # The raw output keeps the thinking the user never sees; the draft is what was checked.
    assert call["output"].startswith("<think>先看资料</think>星尘打印机标准版售价")
    assert call["thinking"] == "用户问价格"
    assert call["tokens"] == {"prompt": 900, "completion": 40}
    assert first["tokens"] == {"prompt": 900, "completion": 40}
    assert first["draft"] == "星尘打印机标准版售价 1999 元[1]。星尘打印机可以打印金属零件[1]。"

    (removed,) = check["verdict"]["removed"]
    assert removed["text"] == "星尘打印机可以打印金属零件。"
    assert removed["reason"].startswith("所引 [1] 的支持度")
    assert [s["status"] for s in check["verdict"]["sentences"]] == ["supported", "unsupported"]
    assert "星尘打印机可以打印金属零件" in check["feedback"]
    assert "calls" not in check

    # The regeneration: the rejected draft and the problems, as the model got them.
    (again,) = second["calls"]
    assert [m["role"] for m in again["messages"][-2:]] == ["assistant", "user"]
    assert again["messages"][-2]["content"] == first["draft"]
    assert "星尘打印机可以打印金属零件" in again["messages"][-1]["content"]
    assert second["tokens"] == {"prompt": 980, "completion": 12}
    assert events[6]["answer"] == PRICE

    # Streamed, never stored: the checkpoint keeps no prompt.
    state = (await graph.aget_state(turn_config("tr"))).values
    assert prompts.render("answer") not in repr(state)


async def test_a_traced_classify_shows_its_model_call(graph: QAGraph, models: ScriptedModels):
    context = Context(rewrite="model", trace=True)
    models.say("星尘打印机整机保修两年[1]。")
    await run_turn(graph, "tc", "星尘打印机保修多久？", context)
    models.say(reply("not json", 120, 3), PRICE)
    events = await traced_events(graph, "tc", "价格呢？", context)
    (call,) = events[0]["calls"]
    assert call["messages"][0]["content"] == prompts.render("classify")
    assert call["messages"][-1] == {"role": "user", "content": "价格呢？"}
    # An unparsable reply is shown with why it was not used.
    assert call["output"] == "not json"
    assert call["error"].startswith("ValueError: unparsable classification")
    assert events[0]["degraded"] is True


async def test_an_untraced_turn_builds_no_trace(
    graph: QAGraph, models: ScriptedModels, monkeypatch: pytest.MonkeyPatch
):
    def no_trace(*_: object) -> None:
        raise AssertionError("a trace was built for a turn that asked for none")

    monkeypatch.setattr(trace, "_message", no_trace)
    models.say(PRICE)
    events = await traced_events(graph, "tn", "星尘打印机售价多少？", Context())
    assert all("calls" not in e and "tokens" not in e for e in events)
    assert events[2]["evidence"][0].keys() == {"id", "title", "score"}
