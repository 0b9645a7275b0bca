"""The console's pages and fragments.

A page is a shell: layout, navigation and forms, no data, so it needs no key to load. The data
comes in fragments (htmx), each a template over the JSON of public API endpoints called
in-process with the caller's own Authorization header: the console can see and do nothing a
script holding the same key could not, and its requests meet the API's auth, tenancy and
audit on the way. The playground calls `/v1/chat/stream` from the browser itself (a stream).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import httpx
from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from agent.console.charts import Chart, bar_chart
from agent.threads import speaker_of

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"
templates = Jinja2Templates(directory=HERE / "templates")

router = APIRouter(prefix="/console", include_in_schema=False)

STATUS_WORDS = {"ok": "正常", "degraded": "降级", "down": "不可用"}
WINDOWS = (1, 3, 12, 24)
"""Hours the status page offers; the bucket widens with the window, so bars stay countable."""
_BUCKET_MINUTES = {1: 1, 3: 5, 12: 15, 24: 30}


async def _api(
    request: Request,
    path: str,
    params: dict[str, Any] | None = None,
    *,
    method: str = "GET",
    body: dict[str, Any] | None = None,
) -> httpx.Response:
    """Call an API endpoint of this same app, in-process, as the caller."""
    headers = {}
    if authorization := request.headers.get("authorization"):
        headers["Authorization"] = authorization
    transport = httpx.ASGITransport(app=request.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://qqrag") as client:
        return await client.request(method, path, params=params, json=body, headers=headers)


def _refused(request: Request, response: httpx.Response) -> HTMLResponse:
    """The API's refusal (401, 403, …) as a fragment with its message and status: the browser
    sends a 401 back to sign-in, shows the rest."""
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = f"接口出错（HTTP {response.status_code}）"
    return templates.TemplateResponse(
        request, "_error.html", {"message": message}, status_code=response.status_code
    )


@router.get("")
async def console_root() -> RedirectResponse:
    return RedirectResponse("/console/")


@router.get("/", response_class=HTMLResponse)
async def status_page(request: Request) -> Response:
    return templates.TemplateResponse(
        request, "status.html", {"page": "status", "windows": WINDOWS}
    )


@router.get("/signin", response_class=HTMLResponse)
async def signin_page(request: Request) -> Response:
    return templates.TemplateResponse(request, "signin.html", {"page": "signin"})


@router.get("/playground", response_class=HTMLResponse)
async def playground_page(request: Request) -> Response:
    return templates.TemplateResponse(request, "playground.html", {"page": "playground"})


@router.get("/kb", response_class=HTMLResponse)
async def kb_page(request: Request) -> Response:
    return templates.TemplateResponse(request, "kb.html", {"page": "kb"})


def _path(*parts: str) -> str:
    return "/".join(quote(part, safe="") for part in parts)


@router.get("/fragments/kb/bases", response_class=HTMLResponse)
async def kb_bases_fragment(request: Request) -> Response:
    bases = await _api(request, "/v1/kb")
    if bases.status_code != 200:
        return _refused(request, bases)
    return templates.TemplateResponse(request, "_kb_bases.html", bases.json())


async def _documents(request: Request, kb: str, removed: dict[str, Any] | None = None) -> Response:
    documents = await _api(request, f"/v1/kb/{_path(kb)}/documents")
    if documents.status_code != 200:
        return _refused(request, documents)
    context = {**documents.json(), "removed": removed}
    return templates.TemplateResponse(request, "_kb_documents.html", context)


@router.get("/fragments/kb/documents", response_class=HTMLResponse)
async def kb_documents_fragment(request: Request, kb: str) -> Response:
    return await _documents(request, kb)


@router.delete("/fragments/kb/documents", response_class=HTMLResponse)
async def kb_remove_fragment(request: Request, kb: str, document: str) -> Response:
    """Remove a document (the browser has asked to confirm), then the list without it."""
    removed = await _api(
        request, f"/v1/admin/kb/{_path(kb, 'documents', document)}", method="DELETE"
    )
    if removed.status_code != 200:
        return _refused(request, removed)
    return await _documents(request, kb, removed.json())


@router.get("/fragments/kb/passages", response_class=HTMLResponse)
async def kb_passages_fragment(request: Request, kb: str, document: str) -> Response:
    shown = await _api(request, f"/v1/kb/{_path(kb, 'documents', document)}")
    if shown.status_code != 200:
        return _refused(request, shown)
    return templates.TemplateResponse(request, "_kb_passages.html", shown.json())


@router.post("/fragments/kb/search", response_class=HTMLResponse)
async def kb_search_fragment(
    request: Request, kb: Annotated[str, Form()], question: Annotated[str, Form()] = ""
) -> Response:
    hits = await _api(
        request, f"/v1/kb/{_path(kb)}/search", method="POST", body={"question": question}
    )
    if hits.status_code != 200:
        return _refused(request, hits)
    return templates.TemplateResponse(request, "_kb_hits.html", hits.json())


@router.get("/governance", response_class=HTMLResponse)
async def governance_page(request: Request) -> Response:
    return templates.TemplateResponse(request, "governance.html", {"page": "governance"})


async def _tenants(request: Request, **shown: dict[str, Any]) -> Response:
    """The tenants and their keys, with what was just issued or revoked above them."""
    tenants = await _api(request, "/v1/admin/tenants")
    if tenants.status_code != 200:
        return _refused(request, tenants)
    context = {**tenants.json(), "issued": None, "revoked": None, **shown}
    return templates.TemplateResponse(request, "_governance_tenants.html", context)


@router.get("/fragments/governance/tenants", response_class=HTMLResponse)
async def governance_tenants_fragment(request: Request) -> Response:
    return await _tenants(request)


@router.post("/fragments/governance/keys", response_class=HTMLResponse)
async def governance_issue_fragment(
    request: Request,
    tenant: Annotated[str, Form()],
    role: Annotated[str, Form()] = "client",
    label: Annotated[str, Form()] = "",
) -> Response:
    issued = await _api(
        request,
        f"/v1/admin/tenants/{_path(tenant)}/keys",
        method="POST",
        body={"role": role, "label": label},
    )
    if issued.status_code != 201:
        return _refused(request, issued)
    return await _tenants(request, issued=issued.json())


@router.delete("/fragments/governance/keys", response_class=HTMLResponse)
async def governance_revoke_fragment(request: Request, key_id: str) -> Response:
    revoked = await _api(request, f"/v1/admin/keys/{_path(key_id)}", method="DELETE")
    if revoked.status_code != 200:
        return _refused(request, revoked)
    return await _tenants(request, revoked=revoked.json())


@router.get("/fragments/governance/policy", response_class=HTMLResponse)
async def governance_policy_fragment(request: Request) -> Response:
    answers = {}
    for name, path in (
        ("limits", "/v1/admin/limits"),
        ("safety", "/v1/admin/safety"),
        ("profiles", "/v1/admin/profiles"),
    ):
        answer = await _api(request, path)
        if answer.status_code != 200:
            return _refused(request, answer)
        answers[name] = answer.json()
    return templates.TemplateResponse(request, "_governance_policy.html", answers)


INTENTS = {"knowledge": "知识问答", "chitchat": "闲聊", "command": "命令", "blocked": "拦截"}
OUTCOMES = {
    "answered": "已回答",
    "not_found": "没有找到",
    "degraded": "降级回答",
    "blocked": "已拦截",
    "error": "出错",
    "timeout": "超时",
}
RATINGS = {"good": "👍 有用", "bad": "👎 没用"}


def _when(iso: str) -> str:
    return datetime.fromisoformat(iso).astimezone().strftime("%m-%d %H:%M:%S")


def _words() -> dict[str, Any]:
    return {"intents": INTENTS, "outcomes": OUTCOMES, "ratings": RATINGS}


@router.get("/conversations", response_class=HTMLResponse)
async def conversations_page(request: Request) -> Response:
    return templates.TemplateResponse(request, "conversations.html", {"page": "conversations"})


@router.get("/fragments/conversations", response_class=HTMLResponse)
async def conversations_fragment(
    request: Request, q: str = "", tenant: str = "", intent: str = "", degraded: str = ""
) -> Response:
    """The turns the filter finds; empty fields filter nothing."""
    wanted = {"q": q, "tenant": tenant, "intent": intent, "degraded": degraded}
    found = await _api(request, "/v1/audit", {k: v for k, v in wanted.items() if v})
    if found.status_code != 200:
        return _refused(request, found)
    turns = [
        {**turn, "when": _when(turn["created_at"]), "who": speaker_of(turn["thread_id"])}
        for turn in found.json()["turns"]
    ]
    return templates.TemplateResponse(request, "_turns.html", {"turns": turns, **_words()})


@router.get("/fragments/conversation", response_class=HTMLResponse)
async def conversation_fragment(request: Request, thread_id: str) -> Response:
    """A conversation's turns in the order they were asked, each with what the audit kept of
    its run: retrieval, evidence, citations, node timings, feedback."""
    found = await _api(request, "/v1/audit", {"thread_id": thread_id, "limit": 500})
    if found.status_code != 200:
        return _refused(request, found)
    turns = [{**turn, "when": _when(turn["created_at"])} for turn in found.json()["turns"]]
    context = {"thread_id": thread_id, "turns": turns[::-1], **_words()}
    return templates.TemplateResponse(request, "_conversation.html", context)


@router.get("/fragments/feedback", response_class=HTMLResponse)
async def feedback_fragment(request: Request) -> Response:
    found = await _api(request, "/v1/feedback")
    if found.status_code != 200:
        return _refused(request, found)
    rows = [{**row, "when": _when(row["created_at"])} for row in found.json()["feedback"]]
    return templates.TemplateResponse(request, "_feedback.html", {"feedback": rows, **_words()})


@router.get("/fragments/gaps", response_class=HTMLResponse)
async def gaps_fragment(request: Request) -> Response:
    found = await _api(request, "/v1/admin/gaps", {"days": 7})
    if found.status_code != 200:
        return _refused(request, found)
    gaps = [{**gap, "when": _when(gap["last_asked"])} for gap in found.json()["gaps"]]
    return templates.TemplateResponse(request, "_gaps.html", {"gaps": gaps})


def _clock(iso: str) -> str:
    return datetime.fromisoformat(iso).astimezone().strftime("%H:%M")


def _charts(stats: dict[str, Any]) -> list[Chart]:
    buckets, totals = stats["buckets"], stats["totals"]
    times = [_clock(b["start"]) for b in buckets]
    minutes = stats["bucket_minutes"]

    def count(value: float) -> str:
        return f"{value:g}"

    def share(value: float) -> str:
        return f"{value:.0%}"

    return [
        bar_chart(
            "每分钟提问",
            f"{totals['turns_per_minute']:.2f} 次/分钟（共 {totals['turns']} 次）",
            [b["turns"] / minutes for b in buckets],
            times,
            lambda v: f"{v:.2f} 次/分钟",
        ),
        bar_chart(
            "平均耗时",
            f"{totals['mean_seconds']:.2f} 秒（最长 {totals['max_seconds']:.2f} 秒）",
            [b["mean_seconds"] for b in buckets],
            times,
            lambda v: f"{v:.2f} 秒",
        ),
        bar_chart(
            "繁忙拒绝",
            f"{totals['busy']} 次",
            [b["busy"] for b in buckets],
            times,
            count,
        ),
        bar_chart(
            "配额拒绝",
            f"{totals['quota']} 次",
            [b["quota"] for b in buckets],
            times,
            count,
        ),
        bar_chart(
            "降级回答占比",
            share(totals["degraded_share"]),
            [b["degraded"] / b["turns"] if b["turns"] else 0.0 for b in buckets],
            times,
            share,
        ),
        bar_chart(
            "Token 用量",
            f"{totals['tokens']} 个",
            [b["tokens"] for b in buckets],
            times,
            count,
        ),
    ]


@router.get("/fragments/status", response_class=HTMLResponse)
async def status_fragment(
    request: Request, hours: Annotated[int, Query(ge=1, le=48)] = 3
) -> Response:
    bucket = _BUCKET_MINUTES.get(hours, 5)
    stats = await _api(request, "/v1/stats", {"hours": hours, "bucket": bucket})
    if stats.status_code != 200:
        return _refused(request, stats)
    # 503 when a dependency is down: still the data to show.
    ready = (await _api(request, "/readyz")).json()
    context = {
        "ready": ready,
        "words": STATUS_WORDS,
        "stats": stats.json(),
        "charts": _charts(stats.json()),
        "hours": hours,
        "windows": WINDOWS,
    }
    return templates.TemplateResponse(request, "_status.html", context)
