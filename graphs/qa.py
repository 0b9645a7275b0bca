"""The QA graph's wiring, and nothing else: nodes live in `agent.nodes`.

classify ─┬─ knowledge ─> retrieve ─> rerank ─> answer ⇄ tools ─> cite_check ─┬─> END
          │                                       ^                         │
          │                                       └──── regenerate once ────┘
          ├─ chitchat ───────────────────────────> answer ─> END
          ├─ command ─> command ─────────────────────────────> END
          └─ blocked ────────────────────────────────────────> END
"""

from __future__ import annotations

from typing import Literal

from langchain_core.messages import AIMessage
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, StateGraph

from agent.context import Context
from agent.nodes import answer, call_tools, cite_check, classify, command, rerank, retrieve
from agent.state import InputState, State
from agent.turns import QAGraph


# Routers are `async def` although they never await: LangGraph runs a plain function in a worker
# thread when the graph runs async, a hand-off per edge that costs more than the routing.
async def route_intent(state: State) -> Literal["retrieve", "answer", "command", "__end__"]:
    match state.intent:
        case "knowledge":
            return "retrieve"
        case "chitchat":
            return "answer"
        case "command":
            return "command"
        case "blocked":
            return "__end__"
    raise ValueError(f"unexpected intent {state.intent!r}")


async def route_answer(state: State) -> Literal["tools", "cite_check", "__end__"]:
    if state.intent == "chitchat":
        return "__end__"
    # The answer node appends to `scratch` only when it asks for a search.
    last = state.scratch[-1] if state.scratch else None
    if isinstance(last, AIMessage) and last.tool_calls:
        return "tools"
    return "cite_check"


async def route_check(state: State) -> Literal["answer", "__end__"]:
    return "answer" if state.feedback else "__end__"


def build(checkpointer: BaseCheckpointSaver[str] | None = None) -> QAGraph:
    builder = StateGraph(State, input_schema=InputState, context_schema=Context)
    builder.add_node("classify", classify)
    builder.add_node("command", command)
    builder.add_node("retrieve", retrieve)
    builder.add_node("rerank", rerank)
    builder.add_node("answer", answer)
    builder.add_node("tools", call_tools)
    builder.add_node("cite_check", cite_check)

    builder.add_edge(START, "classify")
    builder.add_conditional_edges("classify", route_intent, ["retrieve", "answer", "command", END])
    builder.add_edge("command", END)
    builder.add_edge("retrieve", "rerank")
    builder.add_edge("rerank", "answer")
    builder.add_conditional_edges("answer", route_answer, ["tools", "cite_check", END])
    builder.add_edge("tools", "answer")
    builder.add_conditional_edges("cite_check", route_check, ["answer", END])
    return builder.compile(checkpointer=checkpointer, name="qa")


graph = build()
"""Without a checkpointer: `langgraph dev` and the LangGraph server bring their own."""
