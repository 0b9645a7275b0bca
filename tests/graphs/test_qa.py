from pathlib import Path

import pytest
from langchain_core.messages import AIMessage, ToolMessage
from langgraph.graph import END

from agent.state import State
from graphs.qa import graph, route_answer, route_check, route_intent

PINNED = Path(__file__).with_name("qa.mmd")


def test_topology_is_pinned():
    # A wiring change must show up in review: regenerate qa.mmd deliberately when it changes.
    assert graph.get_graph().draw_mermaid() == PINNED.read_text()


@pytest.mark.parametrize(
    ("intent", "route"),
    [("knowledge", "retrieve"), ("chitchat", "answer"), ("command", "command"), ("blocked", END)],
)
async def test_route_intent(intent, route):
    assert await route_intent(State(intent=intent)) == route


async def test_route_intent_rejects_unknown():
    with pytest.raises(ValueError, match="unexpected intent"):
        await route_intent(State(intent="weather"))  # type: ignore[arg-type]


async def test_route_answer():
    call = AIMessage(content="", tool_calls=[{"name": "search_knowledge", "args": {}, "id": "1"}])
    assert await route_answer(State(scratch=[call])) == "tools"
    tool_result = ToolMessage("r", tool_call_id="1")
    assert await route_answer(State(scratch=[call, tool_result])) == "cite_check"
    assert await route_answer(State()) == "cite_check"
    assert await route_answer(State(intent="chitchat")) == END


async def test_route_check():
    assert await route_check(State(feedback="- 没有出处")) == "answer"
    assert await route_check(State()) == END
