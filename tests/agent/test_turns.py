import pytest

from agent.turns import ThinkFilter, summarize_update


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
