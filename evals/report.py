"""Reports of an evaluation: JSON for machines, a self-contained HTML page for people (tables,
inline SVG bars, per-case drill-down; nothing loaded from the network), a terminal summary."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape as rich_escape
from rich.table import Table

from agent.context import Context
from evals.metrics import METRICS, NODES, Comparison, MetricChange, is_gold
from evals.outcome import CaseRun, EvalOutcome, SuiteRun
from evals.suite import Case
from tools.base import Passage

SNIPPET_CHARS = 160
STATUS = {
    "regressed": "回归",
    "within": "容差内变差",
    "same": "持平",
    "improved": "提升",
    "n/a": "—",
}
CASE_STATUS = {"regressed": "变差", "improved": "变好", "changed": "有变化"}
CONSOLE_MOVED = 20
"""Moved cases listed in the terminal; the HTML report lists them all."""


# —— JSON ——


def report_json(outcome: EvalOutcome) -> dict[str, Any]:
    suite, options = outcome.suite, outcome.options
    return {
        "suite": {
            "name": suite.name,
            "version": suite.version,
            "description": suite.description,
            "credit": suite.credit,
            "cases": len(suite.cases),
        },
        "backend": outcome.backend,
        "knowledge_base": outcome.knowledge,
        "options": {
            "profiles": [run.profile for run in outcome.runs],
            "sample": options.sample,
            "concurrency": options.concurrency,
            "ollama_url": options.ollama_url,
            "judge_model": options.judge_model,
        },
        "baseline": (
            {"path": str(outcome.baseline), "written": outcome.baseline_written}
            if outcome.baseline is not None
            else None
        ),
        "comparison": _comparison_json(outcome.comparison) if outcome.comparison else None,
        "exit_code": outcome.exit_code,
        "unreachable": outcome.unreachable,
        "failing": [
            {"id": case, "known": case in outcome.known_failing, "checks": _failed(outcome, case)}
            for case in outcome.failing
        ],
        "allow_failing": outcome.options.allow_failing,
        "notes": outcome.notes,
        "runs": [_run_json(run) for run in outcome.runs],
    }


def _failed(outcome: EvalOutcome, case_id: str) -> list[str]:
    """The failed checks of a case of the last run, as "第 n 轮：message"."""
    run = next(run for run in outcome.runs[-1].cases if run.case.id == case_id)
    return [
        f"第 {number} 轮：{check.message}"
        for number, checks in enumerate(run.checks, start=1)
        for check in checks
        if not check.ok
    ]


def _comparison_json(comparison: Comparison) -> dict[str, Any]:
    return {
        "before": comparison.before_label,
        "after": comparison.after_label,
        "compared": comparison.compared,
        "regressed": comparison.regressed,
        "added": comparison.added,
        "missing": comparison.missing,
        "metrics": [_change_json(change) for change in comparison.metrics],
        "moved": [
            {
                "id": moved.id,
                "status": moved.status,
                "changes": moved.changes,
                "before": moved.before.as_json(),
                "after": moved.after.as_json(),
            }
            for moved in comparison.moved
        ],
    }


def _change_json(change: MetricChange) -> dict[str, Any]:
    return {
        "key": change.metric.key,
        "before": change.before,
        "after": change.after,
        "delta": change.delta,
        "tolerance": str(change.tolerance),
        "status": change.status,
    }


def context_json(context: Context) -> dict[str, Any]:
    return {key: list(v) if isinstance(v, tuple) else v for key, v in vars(context).items()}


def _run_json(run: SuiteRun) -> dict[str, Any]:
    return {
        "profile": run.profile,
        "context": context_json(run.context),
        "seconds": run.seconds,
        "errors": run.errors,
        "degraded": run.degraded,
        "metrics": {key: {"value": v.value, "n": v.n} for key, v in run.metrics.items()},
        "latency": run.latency(),
        "cases": [_case_json(case_run) for case_run in run.cases],
    }


def _case_json(case_run: CaseRun) -> dict[str, Any]:
    case = case_run.case
    turns = []
    for spec, record, checks, outcome in zip(
        case.turns, case_run.records, case_run.checks, case_run.outcome.turns, strict=True
    ):
        result = record.result
        gold = spec.expect.gold
        turns.append(
            {
                "text": record.text,
                "query": result.query,
                "intent": result.intent,
                "answer": record.answer,
                "blocked": record.blocked,
                "safety_hits": record.safety_hits,
                "degraded": result.degraded,
                "error": record.error,
                "gold": list(gold),
                "candidates": _passages(result.candidates, gold, text=False),
                "ranked": _passages(result.ranked, gold),
                "evidence": _passages(result.evidence, gold),
                "citations": [dict(citation) for citation in result.citations],
                "verdict": dict(result.verdict) if result.verdict else None,
                "model_calls": result.model_calls,
                "tokens": result.tokens,
                "seconds": round(record.seconds, 3),
                "node_seconds": {k: round(v, 4) for k, v in sorted(result.node_seconds.items())},
                "judge": record.judge,
                "checks": [
                    {"name": c.name, "ok": c.ok, "expected": c.expected, "message": c.message}
                    for c in checks
                ],
                "obs": outcome.obs,
            }
        )
    return {
        "id": case.id,
        "passed": case_run.outcome.passed,
        "speaker": _speaker(case),
        "tags": list(case.tags),
        "note": case.note,
        "turns": turns,
    }


def _speaker(case: Case) -> str:
    where = f"群 {case.group_id}" if case.scene == "group" else "私聊"
    return f"{case.platform} · {where} · 用户 {case.user_id}"


def _passages(
    passages: Sequence[Passage], gold: Sequence[str], *, text: bool = True
) -> list[dict[str, Any]]:
    """Passages with their scores and gold marks; `text` adds the opening of each."""
    return [
        {
            "id": p["id"],
            "title": p["title"],
            "source": p["source"],
            "score": p["score"],
            "gold": any(is_gold(p, ref) for ref in gold),
        }
        | ({"text": _clip(p["text"])} if text else {})
        for p in passages
    ]


def _clip(text: str) -> str:
    return text if len(text) <= SNIPPET_CHARS else text[: SNIPPET_CHARS - 1] + "…"


def write_reports(outcome: EvalOutcome, folder: Path) -> list[Path]:
    """`SUITE.PROFILE.json` and `.html` (`SUITE.A-vs-B.*` when comparing) in `folder`."""
    profiles = "-vs-".join(run.profile for run in outcome.runs)
    stem = f"{outcome.suite.name}.{profiles}"
    data = report_json(outcome)
    folder.mkdir(parents=True, exist_ok=True)
    json_path, html_path = folder / f"{stem}.json", folder / f"{stem}.html"
    json_path.write_text(
        json.dumps(data, ensure_ascii=False, sort_keys=True, separators=(",", ":")) + "\n",
        encoding="utf-8",
    )
    html_path.write_text(render_html(data), encoding="utf-8")
    return [json_path, html_path]


# —— HTML ——

_CSS = """
body{font-family:system-ui,"PingFang SC","Microsoft YaHei",sans-serif;margin:2rem;color:#222;
max-width:72rem}
h1{font-size:1.5rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd}
h3{font-size:1rem;margin:1.2rem 0 .4rem}
table{border-collapse:collapse;margin:.4rem 0;font-size:.9rem}
th,td{border:1px solid #ddd;padding:.2rem .5rem;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
.banner{padding:.6rem 1rem;border-radius:4px;font-weight:bold}
.ok{background:#e7f6e7;color:#185c18}.bad{background:#fde8e8;color:#8a1c1c}
.info{background:#eef3fb;color:#1d3d6e}
.regressed{color:#b00020;font-weight:bold}.improved{color:#1b7a1b}.within{color:#9a6700}
details.case{border:1px solid #ddd;border-radius:4px;margin:.3rem 0;padding:.3rem .6rem}
details.case.fail>summary{color:#b00020}summary{cursor:pointer}
.turn{border-left:3px solid #ccc;padding-left:.8rem;margin:.6rem 0}
pre{white-space:pre-wrap;background:#f8f8f8;padding:.4rem;margin:.2rem 0}
.gold{background:#fff6d5}.muted{color:#777}ul.checks{list-style:none;padding-left:0}
li.pass{color:#1b7a1b}li.fail{color:#b00020}
"""


def render_html(report: Mapping[str, Any]) -> str:
    """The report as one HTML page (see the module docstring)."""
    suite = report["suite"]
    title = f"评测报告：{suite['name']}（版本 {suite['version']}）"
    parts = [
        "<!doctype html>",
        '<html lang="zh-CN"><head><meta charset="utf-8">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        _summary_html(report),
        _verdict_html(report),
        _metrics_html(report),
        _latency_html(report),
    ]
    if report["comparison"]:
        parts.append(_moved_html(report["comparison"], report["runs"][-1]["profile"]))
    for run in report["runs"]:
        parts.append(_cases_html(run))
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _summary_html(report: Mapping[str, Any]) -> str:
    suite, kb, options = report["suite"], report["knowledge_base"], report["options"]
    rows = [
        ("说明", suite["description"]),
        ("数据来源与许可", suite["credit"]),
        ("后端", report["backend"]),
        ("档案", " / ".join(options["profiles"])),
        ("用例", _cases_line(report)),
        ("知识库", f"{kb['name']}：{kb['passages']} 段，来源 {len(kb['sources'])} 个"),
        ("并发", options["concurrency"]),
        ("评审模型", options["judge_model"] or "（未指定）"),
    ]
    if report["baseline"]:
        rows.append(("基线", report["baseline"]["path"]))
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows if v != "")
    notes = "".join(f"<li>{_e(note)}</li>" for note in report["notes"])
    return f"<table>{body}</table>" + (f"<ul>{notes}</ul>" if notes else "")


def _cases_line(report: Mapping[str, Any]) -> str:
    run_cases = len(report["runs"][0]["cases"])
    total = report["suite"]["cases"]
    sample = f"（抽样 {run_cases} / {total}）" if run_cases < total else ""
    return f"{run_cases}{sample}"


def _verdict_html(report: Mapping[str, Any]) -> str:
    text, kind = verdict(report)
    return f'<p class="banner {kind}">{_e(text)}</p>'


def verdict(report: Mapping[str, Any]) -> tuple[str, str]:
    """The one-line conclusion and its kind: ok, bad or info."""
    errors = sum(run["errors"] for run in report["runs"])
    comparison = report["comparison"]
    if report["unreachable"]:
        return f"运行无效：{report['unreachable']}", "bad"
    if report["baseline"] and report["baseline"]["written"]:
        return f"已写入基线 {report['baseline']['path']}", "info"
    if errors:
        return f"有 {errors} 轮运行出错，见用例明细", "bad"
    new = [case["id"] for case in report["failing"] if not case["known"]]
    failing = (
        f"；{len(new)} 个用例未通过：{'、'.join(new[:CONSOLE_MOVED])}"
        + ("…" if len(new) > CONSOLE_MOVED else "")
        if new
        else ""
    )
    if comparison is None:
        if new and not report["allow_failing"]:
            return f"没有可比较的基线{failing}", "bad"
        return f"没有可比较的基线：只给出本次数字{failing}", "info"
    regressions = [m for m in comparison["metrics"] if m["status"] == "regressed"]
    worse = sum(1 for m in comparison["moved"] if m["status"] == "regressed")
    against = f"{comparison['after']} 对比 {comparison['before']}"
    if regressions:
        names = "、".join(METRICS[m["key"]].label for m in regressions)
        return f"发现回归（{against}）：{names} 超出容差；变差的用例 {worse} 个{failing}", "bad"
    compared = f"没有回归（{against}，{comparison['compared']} 个用例）；变差的用例 {worse} 个"
    return compared + failing, "ok"


def _metrics_html(report: Mapping[str, Any]) -> str:
    comparison = report["comparison"]
    changes = {m["key"]: m for m in comparison["metrics"]} if comparison else {}
    run = report["runs"][-1]
    out = ["<h2>各节点指标</h2>"]
    if comparison:
        out.append(
            f"<p class=muted>变化 = {_e(comparison['after'])} − {_e(comparison['before'])}，"
            f"按两边都有的 {comparison['compared']} 个用例计算。</p>"
        )
    for node, heading in NODES.items():
        keys = [key for key, metric in METRICS.items() if metric.node == node]
        if comparison:
            head = [
                "指标",
                comparison["before"],
                comparison["after"],
                "变化",
                "容差",
                "结论",
                "图",
            ]
        else:
            head = ["指标", "数值", "样本数", "图"]
        rows = []
        for key in keys:
            metric, value = METRICS[key], run["metrics"][key]
            if comparison:
                change = changes[key]
                before, after = change["before"], change["after"]
                cells = [
                    _e(metric.label),
                    _num(before, metric.ratio),
                    _num(after, metric.ratio),
                    _num(change["delta"], metric.ratio, signed=True),
                    _e(change["tolerance"]),
                    f'<span class="{change["status"]}">{STATUS[change["status"]]}</span>',
                    _bars([before, after], ratio=metric.ratio),
                ]
            else:
                cells = [
                    _e(metric.label),
                    _num(value["value"], metric.ratio),
                    f'<td class="num">{value["n"]}</td>',
                    _bars([value["value"]], ratio=metric.ratio),
                ]
            rows.append(
                f'<tr title="{_e(key)}">'
                + "".join(c if c.startswith("<td") else f"<td>{c}</td>" for c in cells)
                + "</tr>"
            )
        out.append(f"<h3>{_e(heading)}</h3>{_table(head, rows)}")
    return "\n".join(out)


def _table(head: Iterable[str], rows: Iterable[str]) -> str:
    header = "".join(f"<th>{_e(h)}</th>" for h in head)
    return f"<table><tr>{header}</tr>{''.join(rows)}</table>"


def _num(value: float | None, ratio: bool, *, signed: bool = False) -> str:
    if value is None:
        return '<td class="num">—</td>'
    shown = f"{value:+.3f}" if signed and ratio else f"{value:+.1f}" if signed else None
    shown = shown or (f"{value:.3f}" if ratio else f"{value:.1f}")
    return f'<td class="num">{shown}</td>'


_BAR_COLOURS = ("#9db4d8", "#2f6db5")


def _bars(values: Sequence[float | None], *, ratio: bool, width: int = 160) -> str:
    """Horizontal bars, one per value (earlier run lighter); ratios on a 0..1 scale, counts
    scaled to the larger value."""
    present = [v for v in values if v is not None]
    scale = 1.0 if ratio else max(present, default=0.0) or 1.0
    height = 10
    bars = []
    for row, value in enumerate(values):
        colour = _BAR_COLOURS[-1] if row == len(values) - 1 else _BAR_COLOURS[0]
        length = 0 if value is None else round(width * max(value, 0.0) / scale, 1)
        bars.append(
            f'<rect x="0" y="{row * (height + 2)}" width="{length}" height="{height}" '
            f'fill="{colour}"/>'
        )
    total = len(values) * (height + 2)
    return (
        f'<svg width="{width}" height="{total}" role="img" xmlns="http://www.w3.org/2000/svg">'
        f'<rect x="0" y="0" width="{width}" height="{total}" fill="#f2f2f2"/>'
        + "".join(bars)
        + "</svg>"
    )


def _latency_html(report: Mapping[str, Any]) -> str:
    out = [
        "<h2>耗时（仅展示，不参与比较）</h2>",
        "<p class=muted>每轮耗时含并发排队；节点耗时为每次经过该节点的平均值。</p>",
    ]
    for run in report["runs"]:
        latency = run["latency"]
        turn = latency["turn_ms"]
        rows = [
            f"<tr><td>每轮</td><td class=num>{turn['mean']}</td><td class=num>{turn['p50']}</td>"
            f"<td class=num>{turn['p95']}</td><td></td></tr>"
        ]
        top = max(latency["node_ms"].values(), default=0.0)
        for node, ms in latency["node_ms"].items():
            rows.append(
                f"<tr><td>{_e(node)}</td><td class=num>{ms}</td><td></td><td></td>"
                f"<td>{_bars([ms / top if top else 0.0], ratio=True)}</td></tr>"
            )
        out.append(
            f"<h3>档案 {_e(run['profile'])}：共 {run['seconds']} 秒</h3>"
            + _table(["", "平均 ms", "p50 ms", "p95 ms", "图"], rows)
        )
    return "\n".join(out)


def _moved_html(comparison: Mapping[str, Any], profile: str) -> str:
    out = [f"<h2>有变化的用例（{len(comparison['moved'])} 个）</h2>"]
    if comparison["added"]:
        out.append(f"<p>新增用例（无从比较）：{_e('、'.join(comparison['added']))}</p>")
    if comparison["missing"]:
        out.append(f"<p>本次未运行的用例：{_e('、'.join(comparison['missing']))}</p>")
    items = []
    for moved in comparison["moved"]:
        status = moved["status"]
        lines = "".join(f"<li>{_e(line)}</li>" for line in moved["changes"])
        answers = "".join(
            f"<li>第 {n} 轮回答：<pre>{_e(old['answer'])}</pre>→<pre>{_e(new['answer'])}</pre></li>"
            for n, (old, new) in enumerate(
                zip(moved["before"]["turns"], moved["after"]["turns"], strict=False), start=1
            )
            if old["answer"] != new["answer"]
        )
        items.append(
            f'<li><span class="{status}">{CASE_STATUS[status]}</span> '
            f'<a href="#{_anchor(profile, moved["id"])}">{_e(moved["id"])}</a>'
            f"<ul>{lines}{answers}</ul></li>"
        )
    out.append(f"<ul>{''.join(items)}</ul>" if items else "<p>没有用例发生变化。</p>")
    return "\n".join(out)


def _anchor(profile: str, case_id: str) -> str:
    return f"case-{profile}-{case_id}"


def _cases_html(run: Mapping[str, Any]) -> str:
    cases = run["cases"]
    passed = sum(case["passed"] for case in cases)
    out = [f"<h2>用例明细：档案 {_e(run['profile'])}（通过 {passed} / {len(cases)}）</h2>"]
    for case in cases:
        mark = "✓" if case["passed"] else "✗"
        first = case["turns"][0]["text"]
        tags = f" [{_e('、'.join(case['tags']))}]" if case["tags"] else ""
        turns = "".join(_turn_html(n, turn) for n, turn in enumerate(case["turns"], start=1))
        note = f"<p class=muted>{_e(case['note'])}</p>" if case["note"] else ""
        out.append(
            f'<details class="case {"pass" if case["passed"] else "fail"}" '
            f'id="{_e(_anchor(run["profile"], case["id"]))}" data-case="{_e(case["id"])}">'
            f"<summary>{mark} {_e(case['id'])}{tags} — {_e(first)}</summary>"
            f"<p class=muted>{_e(case['speaker'])}</p>{note}{turns}</details>"
        )
    return "\n".join(out)


def _turn_html(number: int, turn: Mapping[str, Any]) -> str:
    facts = [
        ("问题", turn["text"]),
        ("检索的问题", turn["query"]),
        ("意图", turn["intent"]),
        ("模型调用 / tokens", f"{turn['model_calls']} / {turn['tokens']}"),
        ("用时", f"{turn['seconds'] * 1000:.0f} ms"),
    ]
    if turn["blocked"]:
        facts.append(("敏感词拦截", "、".join(turn["safety_hits"])))
    elif turn["safety_hits"]:
        facts.append(("回答中屏蔽的敏感词", "、".join(turn["safety_hits"])))
    if turn["degraded"]:
        facts.append(("降级", "是：有依赖调用失败，回答来自兜底逻辑"))
    if turn["error"]:
        facts.append(("运行出错", turn["error"]))
    if turn["gold"]:
        facts.append(("金标段落", "、".join(turn["gold"])))
    if turn["judge"]:
        judge = turn["judge"]
        facts.append(
            (
                "评审",
                f"忠实度 {judge['faithfulness']:.2f}，相关性 {judge['relevance']:.2f}："
                f"{judge['reason']}",
            )
        )
    table = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in facts)
    checks = "".join(
        f'<li class="{"pass" if c["ok"] else "fail"}">'
        f"{'✓' if c['ok'] else '✗'} {_e(c['name'])}"
        f"{'：期望' + _e(c['expected']) if c['expected'] else ''}"
        f"{'' if c['ok'] else '；' + _e(c['message'])}</li>"
        for c in turn["checks"]
    )
    parts = [
        f'<div class="turn"><h3>第 {number} 轮</h3><table>{table}</table>',
        f"<ul class=checks>{checks}</ul>" if checks else "",
        _passages_html(turn),
        f"<p><b>回答</b></p><pre>{_e(turn['answer'])}</pre>",
        _citations_html(turn),
        _verdict_sentences_html(turn["verdict"]),
        "</div>",
    ]
    return "".join(parts)


def _passages_html(turn: Mapping[str, Any]) -> str:
    if not turn["ranked"] and not turn["evidence"]:
        return ""
    retrieved = {p["id"]: (rank, p["score"]) for rank, p in enumerate(turn["candidates"], 1)}
    evidence = {p["id"] for p in turn["evidence"]}
    ranked_ids = {p["id"] for p in turn["ranked"]}
    rows = []
    listed = [*turn["ranked"], *(p for p in turn["evidence"] if p["id"] not in ranked_ids)]
    for rank, p in enumerate(listed, start=1):
        found = retrieved.get(p["id"])
        origin = "工具检索" if p["id"] not in ranked_ids else ""
        rows.append(
            f'<tr class="{"gold" if p["gold"] else ""}">'
            f"<td class=num>{rank if not origin else '—'}</td>"
            f"<td class=num>{found[0] if found else '—'}</td>"
            f"<td class=num>{found[1] if found else '—'}</td>"
            f"<td class=num>{p['score']}</td>"
            f"<td>{'✓' if p['id'] in evidence else ''}{_e(origin)}</td>"
            f"<td>{'★' if p['gold'] else ''}</td>"
            f"<td>{_e(p['title'])}<br><span class=muted>{_e(p['source'])} · {_e(p['id'])}</span>"
            f"</td><td>{_e(p['text'])}</td></tr>"
        )
    head = ["重排名次", "检索名次", "检索分", "重排分", "证据", "金标", "标题 / 来源", "摘录"]
    return "<p><b>段落</b>（★ 金标，✓ 交给回答模型）</p>" + _table(head, rows)


def _citations_html(turn: Mapping[str, Any]) -> str:
    if not turn["citations"]:
        return ""
    items = "".join(
        f"<li>[{c['index']}] {_e(c['title'])} · {_e(c['source'])}"
        f"<br><span class=muted>{_e(c['snippet'])}</span></li>"
        for c in turn["citations"]
    )
    return f"<p><b>引用</b></p><ul>{items}</ul>"


def _verdict_sentences_html(verdict_data: Mapping[str, Any] | None) -> str:
    if not verdict_data:
        return ""
    ratio = verdict_data["supported_ratio"]
    head = (
        f"<p><b>引用核对</b>：有据句子占比 {'—' if ratio is None else f'{ratio:.2f}'}，"
        f"删除 {len(verdict_data['removed'])} 句，无效编号 {verdict_data['invalid_refs'] or '无'}，"
        f"{'判定为拒答' if verdict_data['refusal'] else '非拒答'}</p>"
    )
    rows = [
        f"<tr><td>{_e(s['text'])}</td><td>{_e(s['cited'])}</td><td>{_e(s['status'])}</td>"
        f"<td class=num>{s['score']:.2f}</td></tr>"
        for s in verdict_data["sentences"]
    ]
    return head + _table(["句子", "引用", "结论", "支持度"], rows) if rows else head


# —— the terminal ——


def print_summary(outcome: EvalOutcome, console: Console) -> None:
    report = report_json(outcome)
    suite = report["suite"]
    console.print(
        f"[bold]评测 {rich_escape(suite['name'])}[/]（版本 {suite['version']}）· "
        f"后端 {rich_escape(report['backend'])} · 用例 {_cases_line(report)} · "
        f"知识库 {report['knowledge_base']['passages']} 段"
    )
    comparison = outcome.comparison
    run = report["runs"][-1]
    if comparison is not None:
        table = Table(title=f"{comparison.after_label} 对比 {comparison.before_label}")
        for column in ("指标", comparison.before_label, comparison.after_label, "变化", "容差"):
            table.add_column(column, justify="left" if column == "指标" else "right")
        table.add_column("结论")
        for change in comparison.metrics:
            metric = change.metric
            style = {"regressed": "red", "improved": "green", "within": "yellow"}.get(
                change.status, ""
            )
            table.add_row(
                metric.label,
                _plain(change.before, metric.ratio),
                _plain(change.after, metric.ratio),
                _plain(change.delta, metric.ratio, signed=True),
                str(change.tolerance),
                f"[{style}]{STATUS[change.status]}[/]" if style else STATUS[change.status],
            )
    else:
        table = Table(title=f"档案 {run['profile']}")
        table.add_column("指标")
        table.add_column("数值", justify="right")
        table.add_column("样本数", justify="right")
        for key, metric in METRICS.items():
            value = run["metrics"][key]
            table.add_row(metric.label, _plain(value["value"], metric.ratio), str(value["n"]))
    console.print(table)
    latency = run["latency"]["turn_ms"]
    console.print(
        f"每轮耗时 平均 {latency['mean']} ms，p50 {latency['p50']} ms，p95 {latency['p95']} ms"
        f"（共 {run['seconds']} 秒）"
    )
    if comparison is not None and comparison.moved:
        console.print(f"[bold]有变化的用例 {len(comparison.moved)} 个：[/]")
        for moved in comparison.moved[:CONSOLE_MOVED]:
            colour = {"regressed": "red", "improved": "green"}.get(moved.status, "yellow")
            lines = "；".join(moved.changes[:3]) + ("…" if len(moved.changes) > 3 else "")
            console.print(
                f"  [{colour}]{CASE_STATUS[moved.status]}[/] {rich_escape(moved.id)}："
                f"{rich_escape(lines)}",
                soft_wrap=True,
            )
        if len(comparison.moved) > CONSOLE_MOVED:
            console.print(f"  …另有 {len(comparison.moved) - CONSOLE_MOVED} 个，见 HTML 报告")
    if report["failing"]:
        console.print(f"[bold]未通过的用例 {len(report['failing'])} 个：[/]")
        for case in report["failing"][:CONSOLE_MOVED]:
            known = "（基线里也未通过）" if case["known"] else ""
            first = "；".join(case["checks"][:2]) + ("…" if len(case["checks"]) > 2 else "")
            console.print(
                f"  [red]✗[/] {rich_escape(case['id'])}{known}：{rich_escape(first)}",
                soft_wrap=True,
            )
        if len(report["failing"]) > CONSOLE_MOVED:
            console.print(f"  …另有 {len(report['failing']) - CONSOLE_MOVED} 个，见 HTML 报告")
    # Soft wrap: a note or a path broken at the terminal width cannot be copied whole.
    for note in report["notes"]:
        console.print(f"注：{rich_escape(note)}", soft_wrap=True)
    for path in outcome.reports:
        console.print(f"报告：{rich_escape(str(path))}", soft_wrap=True)
    text, kind = verdict(report)
    colour = {"ok": "green", "bad": "red", "info": "cyan"}[kind]
    console.print(f"[bold {colour}]{rich_escape(text)}[/]", soft_wrap=True)


def _plain(value: float | None, ratio: bool, *, signed: bool = False) -> str:
    if value is None:
        return "—"
    if signed:
        return f"{value:+.3f}" if ratio else f"{value:+.1f}"
    return f"{value:.3f}" if ratio else f"{value:.1f}"
