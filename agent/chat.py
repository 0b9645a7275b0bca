"""`qqrag chat`: a terminal conversation through the service's own turn path, showing what
every node did: a line each, or in full (`--trace`: the prompts sent, the raw model output,
the draft and the citation check), or as JSON lines (`--json`)."""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import dataclass
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from agent.context import Context
from agent.gateway import Answer, Pin, Refusal, Speaker
from agent.policy.tenants import Principal
from agent.runtime import GraphBuilder, open_runtime
from agent.settings import get_settings

PASSAGE_KEYS = ("candidates", "ranked", "evidence")
_SHORT_TEXT = 60
_SYSTEM_LINES = 3
_STATUS = {
    "supported": "有依据",
    "repaired": "改了编号",
    "unsupported": "删除",
    "uncited": "无需引用",
}


@dataclass(frozen=True)
class View:
    """How the turns are shown."""

    trace: bool = False
    """Each node in full: prompts, raw output, draft, citation check, tokens and seconds."""
    json: bool = False
    """One JSON object per line: each node event (traced), then the result."""
    full: bool = False
    """Whole system prompts and passage texts in the traced view."""
    passages: bool = False
    """Whole passage texts."""

    @property
    def traced(self) -> bool:
        return self.trace or self.json or self.full or self.passages

    @property
    def passage_text(self) -> bool:
        return self.passages or self.full


def _show_node(console: Console, summary: dict[str, Any]) -> None:
    node = summary.pop("node")
    parts = []
    for key, value in summary.items():
        if key in PASSAGE_KEYS:
            shown = ", ".join(f"{p['id']}({p['score']:.2f}) {p['title'][:20]}" for p in value[:5])
            parts.append(f"{key}=[{shown}]")
        elif key not in ("draft", "answer"):
            parts.append(f"{key}={value}")
    console.print(f"  [dim]· {node}[/] " + escape("  ".join(parts)))


def _show_answer(console: Console, answer: Answer) -> None:
    tag = " [yellow](降级)[/]" if answer.degraded else ""
    console.print(f"[bold cyan]机器人>[/]{tag} {escape(answer.answer)}")
    for c in answer.citations:
        console.print(f"  [dim][{c['index']}] {escape(c['title'])} · {escape(c['source'])}[/]")
    result = answer.result
    console.print(f"  [dim]模型调用 {result.model_calls} 次，{result.tokens} tokens[/]")


# —— the traced view ——


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}…"


def _passages(title: str, passages: list[dict[str, Any]], view: View) -> Table:
    table = Table("#", "id", "分数", "标题", "来源", "正文", title=title, title_justify="left")
    for number, p in enumerate(passages, start=1):
        text = p.get("text", "")
        table.add_row(
            str(number),
            Text(p["id"]),
            f"{p['score']:.3f}",
            Text(p["title"]),
            Text(p.get("source", "")),
            Text(text if view.passage_text else _short(text, _SHORT_TEXT)),
        )
    return table


def _content(message: dict[str, Any], view: View) -> Text:
    content = message["content"]
    if message["role"] == "system" and not view.full:
        lines = content.splitlines()
        if len(lines) > _SYSTEM_LINES:
            head = "\n".join(lines[:_SYSTEM_LINES])
            rest = f"\n…（共 {len(lines)} 行 {len(content)} 字，--full 显示全部）"
            return Text(head) + Text(rest, style="dim")
    text = Text(content)
    for call in message.get("tool_calls", []):
        text.append(f"\n→ 调用 {call['name']} {json.dumps(call['args'], ensure_ascii=False)}")
    return text


def _call(call: dict[str, Any], view: View) -> list[RenderableType]:
    shown: list[RenderableType] = []
    for message in call["messages"]:
        shown.append(Panel(_content(message, view), title=message["role"], title_align="left"))
    if thinking := call.get("thinking"):
        shown.append(Panel(Text(thinking), title="思考", title_align="left", style="dim"))
    if "output" in call:
        output = Text(call["output"])
        for tool in call.get("tool_calls", []):
            args = json.dumps(tool["args"], ensure_ascii=False)
            output.append(f"\n→ 调用 {tool['name']} {args}")
        tokens = call.get("tokens", {})
        used = f" · 提示 {tokens.get('prompt', 0)} + 生成 {tokens.get('completion', 0)} tokens"
        shown.append(
            Panel(output, title=f"模型原始输出{used}", title_align="left", border_style="cyan")
        )
    if error := call.get("error"):
        shown.append(Panel(Text(error), title="模型调用失败", title_align="left", style="red"))
    return shown


def _verdict(verdict: dict[str, Any]) -> list[RenderableType]:
    ratio = verdict["supported_ratio"]
    facts = f"有依据的比例 {'—' if ratio is None else f'{ratio:.0%}'}"
    if verdict.get("invalid_refs"):
        facts += f"，不存在的编号 {verdict['invalid_refs']}"
    if verdict.get("refusal"):
        facts += "，判定为“知识库里没有”"
    shown: list[RenderableType] = [Text(facts)]
    if sentences := verdict.get("sentences"):
        table = Table("结论", "引用", "支持度", "句子", title="逐句检查", title_justify="left")
        for s in sentences:
            cited = "".join(f"[{n}]" for n in s["cited"])
            table.add_row(
                _STATUS.get(s["status"], s["status"]), cited, f"{s['score']:.2f}", Text(s["text"])
            )
        shown.append(table)
    for removed in verdict["removed"]:
        line = Text("删除：", style="red") + Text(removed["text"])
        shown.append(line + Text(f"\n  原因：{removed['reason']}", style="dim"))
    return shown


_FACTS = (
    ("intent", "意图"),
    ("query", "检索串"),
    ("question", "问题"),
    ("draft_source", "草稿来源"),
    ("attempts", "第几次生成"),
    ("tool_rounds", "补充检索次数"),
    ("degraded", "降级"),
    ("knowledge_error", "知识库错误"),
)


def _trace_panel(summary: dict[str, Any], view: View) -> Panel:
    shown: list[RenderableType] = []
    facts = Table.grid(padding=(0, 2))
    for key, label in _FACTS:
        if key in summary:
            facts.add_row(label, Text(str(summary[key])))
    if facts.row_count:
        shown.append(facts)
    for key in PASSAGE_KEYS:
        if key in summary:
            shown.append(_passages(key, summary[key], view))
    for call in summary.get("calls", []):
        shown += _call(call, view)
    if draft := summary.get("draft"):
        shown.append(Panel(Text(draft), title="草稿（引用检查前）", title_align="left"))
    if verdict := summary.get("verdict"):
        shown += _verdict(verdict)
    if feedback := summary.get("feedback"):
        shown.append(Panel(Text(feedback), title="要求重新生成", title_align="left"))
    if answer := summary.get("answer"):
        shown.append(Panel(Text(answer), title="回答（脱敏前）", title_align="left"))
    title = f"{summary['node']} · {summary['seconds']:.3f} 秒"
    if tokens := summary.get("tokens"):
        title += f" · 提示 {tokens['prompt']} + 生成 {tokens['completion']} tokens"
    return Panel(Group(*shown), title=title, title_align="left", border_style="blue")


# —— JSON lines ——


def _json_event(summary: dict[str, Any], view: View) -> dict[str, Any]:
    event = {"event": "node", **summary}
    if not view.passage_text:
        # Passage texts only on request: a turn's candidates are most of its event's size.
        for key in PASSAGE_KEYS:
            if key in event:
                event[key] = [{k: v for k, v in p.items() if k != "text"} for p in event[key]]
    return event


def _json_result(answer: Answer) -> dict[str, Any]:
    result = answer.result
    return {
        "event": "result",
        "answer": answer.answer,
        "citations": answer.citations,
        "intent": answer.intent,
        "degraded": answer.degraded,
        "thread_id": answer.thread_id,
        "trace_id": answer.trace_id,
        "profile": answer.profile,
        "query": result.query,
        "question": result.question,
        "model_calls": result.model_calls,
        "tokens": result.tokens,
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "node_seconds": {node: round(s, 4) for node, s in result.node_seconds.items()},
    }


def _emit(line: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(line, ensure_ascii=False) + "\n")
    sys.stdout.flush()


async def run_chat(
    build: GraphBuilder,
    principal: Principal,
    user: str,
    context: Context,
    console: Console,
    view: View | None = None,
) -> None:
    """Each line a turn through the gateway (quota, safety, audit, metrics as over HTTP), as
    `user` of `principal`'s tenant, with `context` pinned; commands such as /重置 included."""
    view = view or View()
    settings = get_settings()
    speaker = Speaker(platform="cli", scene="private", user_id=user)
    async with open_runtime(settings, build) as runtime:
        gateway = runtime.gateway
        if not view.json:
            console.print(
                f"对话 {gateway.thread_of(principal, speaker)}，模型 {context.chat_model}，"
                f"Ollama {settings.ollama_url}。输入 /重置 清空对话，/quit 退出。"
            )

        def read() -> str:
            # JSON lines are for a program: no prompt between them.
            return input() if view.json else console.input("[bold green]你>[/] ")

        while True:
            try:
                text = (await asyncio.to_thread(read)).strip()
            except (EOFError, KeyboardInterrupt):
                break
            if text in ("/quit", "/exit"):
                break
            if not text:
                continue
            try:
                turn = await gateway.admit(principal, speaker, text, pin=Pin("cli", context))
                async for kind, payload in gateway.run(turn, trace=view.traced):
                    if kind == "node":
                        if view.json:
                            _emit(_json_event(payload, view))
                        elif view.traced:
                            console.print(_trace_panel(payload, view))
                        else:
                            _show_node(console, payload)
                    elif kind == "answer":
                        if view.json:
                            _emit(_json_result(payload))
                        else:
                            _show_answer(console, payload)
            except Refusal as refusal:
                if view.json:
                    _emit({"event": "refusal", "code": refusal.code, "message": refusal.message})
                else:
                    console.print(f"[yellow]{escape(refusal.message)}[/]")
