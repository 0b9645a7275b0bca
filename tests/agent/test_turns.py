import pytest

from agent.context import Context
from agent.turns import QAGraph, ThinkFilter, summarize_update, turn_config
from tests.conftest import ScriptedModels, run_turn


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
