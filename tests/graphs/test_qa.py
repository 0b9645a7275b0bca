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
    [("knowledge", "retrieve"), ("chitchat", "answer"), ("command", END), ("blocked", END)],
)
def test_route_intent(intent, route):
    assert route_intent(State(intent=intent)) == route


def test_route_intent_rejects_unknown():
    with pytest.raises(ValueError, match="unexpected intent"):
        route_intent(State(intent="weather"))  # type: ignore[arg-type]


def test_route_answer():
    call = AIMessage(content="", tool_calls=[{"name": "search_knowledge", "args": {}, "id": "1"}])
    assert route_answer(State(scratch=[call])) == "tools"
    assert route_answer(State(scratch=[call, ToolMessage("r", tool_call_id="1")])) == "cite_check"
    assert route_answer(State()) == "cite_check"
    assert route_answer(State(intent="chitchat")) == END


def test_route_check():
    assert route_check(State(feedback="- 没有出处")) == "answer"
    assert route_check(State()) == END
