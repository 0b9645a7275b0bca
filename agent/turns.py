"""Running one turn of the graph: shared by the HTTP service, `qqrag chat` and the evals."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import asdict, dataclass, field
from typing import Any, cast

from langchain_core.messages import AIMessageChunk, HumanMessage
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import StreamMode

from agent.context import Context
from agent.state import TURN_RESET, Citation, InputState, State, Verdict
from tools.base import Passage

log = logging.getLogger(__name__)

QAGraph = CompiledStateGraph[State, Context, InputState, State]

_DISCARD_TIMEOUT_S = 5.0


@dataclass
class TurnResult:
    answer: str
    citations: list[Citation]
    intent: str
    query: str
    """What retrieval searched for."""
    degraded: bool
    verdict: Verdict | None = None
    evidence: list[Passage] = field(default_factory=list)
    candidates: list[Passage] = field(default_factory=list)
    ranked: list[Passage] = field(default_factory=list)
    model_calls: int = 0
    tokens: int = 0
    prompt_tokens: int = 0
    """Of `tokens`, those of the prompts, summed over the turn's model calls."""
    completion_tokens: int = 0
    """Of `tokens`, those the models wrote, summed over the turn's model calls."""
    node_seconds: dict[str, float] = field(default_factory=dict)
    """Wall time per node, summed when a node ran more than once (answer ⇄ tools)."""
    question: str = ""
    """What the answer model was asked and the citation check weighed claims against."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def turn_input(text: str, message_id: str | None = None) -> InputState:
    extra = {"message_id": message_id} if message_id else {}
    return InputState(messages=[HumanMessage(content=text, additional_kwargs=extra)])


def turn_config(thread_id: str, trace_id: str | None = None) -> RunnableConfig:
    return {
        "configurable": {"thread_id": thread_id},
        "metadata": {"trace_id": trace_id} if trace_id else {},
        "run_name": "qa-turn",
    }


def result_from_state(
    values: dict[str, Any], node_seconds: dict[str, float] | None = None
) -> TurnResult:
    return TurnResult(
        answer=values.get("answer", ""),
        citations=values.get("citations", []),
        intent=values.get("intent", "knowledge"),
        query=values.get("query", ""),
        degraded=values.get("degraded", False),
        verdict=values.get("verdict"),
        evidence=values.get("evidence", []),
        candidates=values.get("candidates", []),
        ranked=values.get("ranked", []),
        model_calls=values.get("model_calls", 0),
        tokens=values.get("tokens", 0),
        prompt_tokens=values.get("prompt_tokens", 0),
        completion_tokens=values.get("completion_tokens", 0),
        node_seconds=node_seconds or {},
        question=values.get("question", ""),
    )


class ThinkFilter:
    """Drops `<think>…</think>` from a token stream, even when a tag is split across chunks."""

    def __init__(self) -> None:
        self._pending = ""
        self._thinking = False

    def feed(self, text: str) -> str:
        self._pending += text
        out = []
        while self._pending:
            tag = "</think>" if self._thinking else "<think>"
            at = self._pending.find(tag)
            if at >= 0:
                if not self._thinking:
                    out.append(self._pending[:at])
                self._pending = self._pending[at + len(tag) :]
                self._thinking = not self._thinking
                continue
            # Keep a possible partial tag for the next chunk.
            keep = next(
                (n for n in range(len(tag) - 1, 0, -1) if self._pending.endswith(tag[:n])), 0
            )
            if not self._thinking:
                out.append(self._pending[: len(self._pending) - keep])
            self._pending = self._pending[len(self._pending) - keep :]
            break
        return "".join(out)


def _brief(passages: list[Passage]) -> list[dict[str, Any]]:
    return [{"id": p["id"], "title": p["title"], "score": p["score"]} for p in passages]


_SHOWN = ("intent", "query", "draft", "feedback", "answer", "degraded", "tool_rounds")
_DETAIL = (*_SHOWN, "question", "draft_source", "attempts", "knowledge_error")


def summarize_update(node: str, update: dict[str, Any], *, detail: bool = False) -> dict[str, Any]:
    """What a node did, small enough for a progress event or a terminal line; with `detail`
    (a trace) whole passages and the citation check's every sentence too."""
    summary: dict[str, Any] = {"node": node}
    if node == "classify":
        # What classify resets for the new turn is no finding of its own.
        update = {k: v for k, v in update.items() if k not in TURN_RESET or v != TURN_RESET[k]}
    for key in _DETAIL if detail else _SHOWN:
        if update.get(key) not in (None, ""):
            summary[key] = update[key]
    for key in ("candidates", "ranked", "evidence"):
        if key in update:
            summary[key] = [dict(p) for p in update[key]] if detail else _brief(update[key])
    if update.get("verdict"):
        verdict = update["verdict"]
        shown = verdict.keys() if detail else ("supported_ratio", "removed", "invalid_refs")
        summary["verdict"] = {k: verdict[k] for k in shown}
    if node == "answer" and update.get("scratch"):
        calls = getattr(update["scratch"][-1], "tool_calls", [])
        summary["tool_calls"] = [{"name": c["name"], "args": c["args"]} for c in calls]
    return summary


async def stream_turn(
    graph: QAGraph,
    thread: str,
    text: str,
    context: Context,
    *,
    message_id: str | None = None,
    trace_id: str | None = None,
    tokens: bool = True,
) -> AsyncGenerator[tuple[str, Any]]:
    """Yields ("node", summary) after each node, ("token", text) while the answer is written
    (when `tokens`), and finally ("result", TurnResult).

    With `context.trace` the summaries are detailed, and a node's model calls (`agent.trace`:
    messages sent, raw reply, tokens) come with it as "calls"."""
    # Every turn is marked in its checkpoints' metadata, so a failed one can be taken back.
    trace_id = trace_id or uuid.uuid4().hex[:16]
    visible = ThinkFilter()
    node_seconds: dict[str, float] = {}
    final: dict[str, Any] = {}
    # The final state is gathered from the nodes' updates rather than streamed ("values" mode
    # copies the whole state after every step, a tenth of a turn's CPU): classify resets every
    # per-turn field (TURN_RESET), so the updates of this turn hold all that the result reads.
    modes: list[StreamMode] = ["updates", "messages"] if tokens else ["updates"]
    if context.trace:
        modes.append("custom")
    # With a list of stream modes every part is a (mode, payload) pair.
    parts = cast(
        AsyncIterator[tuple[str, Any]],
        graph.astream(
            turn_input(text, message_id),
            turn_config(thread, trace_id),
            context=context,
            stream_mode=modes,
            # One checkpoint write per turn, so a turn is stored whole or not at all.
            durability="exit",
        ),
    )
    started = time.perf_counter()
    try:
        async for kind, part in _parts(parts, visible, node_seconds, final, started, context.trace):
            yield kind, part
    except BaseException:
        # Shielded: a cancelled turn (deadline, client gone) must still take back its half.
        await asyncio.shield(discard_turn(graph, thread, trace_id, _discard_within(context)))
        raise
    await _prune(graph, thread)
    yield "result", result_from_state(final, node_seconds)


async def _parts(
    parts: AsyncIterator[tuple[str, Any]],
    visible: ThinkFilter,
    node_seconds: dict[str, float],
    final: dict[str, Any],
    started: float,
    detail: bool,
) -> AsyncIterator[tuple[str, Any]]:
    # A node's model calls stream while it runs; they go out with its update.
    calls: dict[str, list[dict[str, Any]]] = {}
    async for mode, payload in parts:
        if mode == "updates":
            # Nodes run one after another, so a node's time is the time since the last update.
            now = time.perf_counter()
            for node, update in payload.items():
                node_seconds[node] = node_seconds.get(node, 0.0) + now - started
                final.update(update or {})
                summary = summarize_update(node, update or {}, detail=detail)
                summary["seconds"] = round(now - started, 4)
                if node in calls:
                    summary["calls"] = calls.pop(node)
                    summary["tokens"] = {
                        side: sum(c.get("tokens", {}).get(side, 0) for c in summary["calls"])
                        for side in ("prompt", "completion")
                    }
                yield "node", summary
            started = now
        elif mode == "custom":
            calls.setdefault(payload["node"], []).append(payload["call"])
        elif mode == "messages":
            chunk, meta = payload
            if meta.get("langgraph_node") == "answer" and isinstance(chunk, AIMessageChunk):
                token = visible.feed(chunk.content if isinstance(chunk.content, str) else "")
                if token:
                    yield "token", token


def _discard_within(context: Context) -> float:
    """Seconds to take a failed turn back in: what its deadline leaves, at least half a second
    (a turn at its deadline still gets its chance), at most `_DISCARD_TIMEOUT_S`."""
    if context.deadline is None:
        return _DISCARD_TIMEOUT_S
    return min(_DISCARD_TIMEOUT_S, max(0.5, context.deadline - time.monotonic()))


async def discard_turn(
    graph: QAGraph, thread: str, trace_id: str, within_s: float = _DISCARD_TIMEOUT_S
) -> None:
    """Take back whatever the turn `trace_id` stored of itself: a turn that fails (an error, its
    deadline, a client gone) leaves the conversation as it was before it, never a question
    without its answer. Bounded in time; a failure here is logged, not raised."""
    config = turn_config(thread)
    try:
        async with asyncio.timeout(within_s):
            ours, before = False, None
            async for snapshot in graph.aget_state_history(config):
                if (snapshot.metadata or {}).get("trace_id") == trace_id:
                    ours = True
                    continue
                before = snapshot
                break
            if not ours:
                return
            if before is None:
                saver = graph.checkpointer
                if isinstance(saver, BaseCheckpointSaver):
                    await saver.adelete_thread(thread)
                return
            # A copy of the checkpoint before the turn becomes the newest; pruning drops the
            # failed turn's.
            await graph.aupdate_state(before.config, None, as_node="__copy__")
            await _prune(graph, thread)
    except Exception as exc:
        log.warning("failed turn %s of %s not taken back: %s", trace_id, thread, exc)


async def _prune(graph: QAGraph, thread: str) -> None:
    """Keep only the thread's newest checkpoint: it holds the whole (bounded) conversation,
    and older ones would grow the database by a conversation's size every turn."""
    saver = graph.checkpointer
    if not isinstance(saver, BaseCheckpointSaver):
        return
    try:
        await saver.aprune([thread], strategy="keep_latest")
    except NotImplementedError:
        return
    except Exception as exc:
        # The turn is stored already; the old checkpoints go with the next turn's prune.
        log.warning("old checkpoints of %s not pruned: %s", thread, exc)
