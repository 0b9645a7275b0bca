"""The middle platform through HTTP: keys and tenants, quotas, admission, sensitive words,
gray release, audit and metrics, and the OpenAI-compatible endpoint."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

import server
from agent import prompts
from agent.audit import AuditLog
from agent.policy.tenants import TenantStore
from agent.settings import get_settings
from evals.fakes.ollama import FakeOllama, LatencyModel
from evals.harness import ServiceProcess
from tests.conftest import FIXTURES


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOllama]:
    with FakeOllama() as server_:
        yield server_


@pytest.fixture
def data(tmp_path: Path, fake: FakeOllama, monkeypatch: pytest.MonkeyPatch) -> Path:
    fake.reset()
    fake.latency = LatencyModel()
    monkeypatch.setenv("QQRAG_OLLAMA_URL", fake.url)
    monkeypatch.setenv("QQRAG_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("QQRAG_DEFAULT_DOCS", str(FIXTURES / "kb"))
    get_settings.cache_clear()
    (tmp_path / "data").mkdir()
    return tmp_path / "data"


def app_client() -> TestClient:
    get_settings.cache_clear()
    return TestClient(server.create_app())


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def ask(client: TestClient, text: str, key: str | None = None, **who: object) -> httpx.Response:
    body = {"scene": "group", "group_id": "20002", "user_id": "30003", "text": text} | who
    return client.post("/v1/chat", json=body, headers=bearer(key) if key else {})


def issue(data: Path, tenant: str, kbs: list[str], role: str = "client") -> str:
    store = TenantStore(data / "tenants.sqlite")
    try:
        if store.tenant(tenant) is None:
            store.create_tenant(tenant, kbs)
        return store.issue_key(tenant, role)  # type: ignore[arg-type]
    finally:
        store.close()


def test_tenants_see_only_their_own_threads_knowledge_and_audit(data: Path):
    from tools.kb import EmbeddedKB

    kb = EmbeddedKB(data / "kb.sqlite", "printers")
    kb.add_path(FIXTURES / "kb" / "stardust.md")
    kb.close()
    kb = EmbeddedKB(data / "kb.sqlite", "robots")
    kb.add_path(FIXTURES / "kb" / "moonlight.md")
    kb.close()
    alice = issue(data, "alice", ["printers"])
    bob = issue(data, "bob", ["robots"])
    root = issue(data, "ops", ["default"], role="admin")

    with app_client() as client:
        assert ask(client, "星尘打印机保修多久？").status_code == 401
        refused = ask(client, "星尘打印机保修多久？", "qqrag-" + "x" * 32)
        assert refused.status_code == 401
        assert refused.headers["WWW-Authenticate"] == "Bearer"
        assert refused.json()["error"]["code"] == "unauthorized"

        mine = ask(client, "星尘打印机保修多久？", alice).json()
        assert mine["thread_id"] == "alice:qq:group:20002:30003"
        assert mine["citations"][0]["title"] == "星尘打印机 › 保修"
        # Bob's knowledge base has no printers, and his conversation is his own.
        theirs = ask(client, "星尘打印机保修多久？", bob).json()
        assert theirs["thread_id"] == "bob:qq:group:20002:30003"
        assert theirs["citations"] == [] and theirs["answer"].startswith("知识库里没有找到")
        assert ask(client, "月光扫地机器人续航多久？", bob).json()["citations"]

        thread = "/v1/threads/alice:qq:group:20002:30003"
        assert client.get(thread, headers=bearer(bob)).status_code == 404
        assert client.delete(thread, headers=bearer(bob)).status_code == 404
        assert len(client.get(thread, headers=bearer(alice)).json()["messages"]) == 2
        assert len(client.get(thread, headers=bearer(root)).json()["messages"]) == 2

        own = client.get("/v1/audit", headers=bearer(bob)).json()["turns"]
        assert {row["tenant"] for row in own} == {"bob"} and len(own) == 2
        peek = client.get("/v1/audit?tenant=alice", headers=bearer(bob)).json()["turns"]
        assert {row["tenant"] for row in peek} == {"bob"}
        everyone = client.get("/v1/audit", headers=bearer(root)).json()["turns"]
        assert {row["tenant"] for row in everyone} == {"alice", "bob"}

        assert client.get("/v1/admin/gaps", headers=bearer(bob)).status_code == 403
        gaps = client.get("/v1/admin/gaps", headers=bearer(root)).json()["gaps"]
        assert [(g["query"], g["times"]) for g in gaps] == [("星尘打印机保修多久？", 1)]

        assert client.delete(thread, headers=bearer(alice)).json()["deleted"] is True


def test_quota_refuses_with_retry_after_and_survives_a_restart(
    data: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("QQRAG_QUOTA_USER_RPM", "2")
    with app_client() as client:
        assert ask(client, "星尘打印机保修多久？").status_code == 200
        assert ask(client, "星尘打印机支持哪些耗材？").status_code == 200
        refused = ask(client, "星尘打印机售价多少？")
        assert refused.status_code == 429
        assert int(refused.headers["Retry-After"]) >= 1
        assert refused.json()["error"]["code"] == "quota_exceeded"
        assert "秒后再试" in refused.json()["error"]["message"]
        # Someone else in the group still gets through.
        assert ask(client, "星尘打印机售价多少？", user_id="other").status_code == 200
    with app_client() as restarted:
        assert ask(restarted, "星尘打印机售价多少？").status_code == 429
        metrics = restarted.get("/metrics").text
        assert 'qqrag_quota_rejections_total{scope="user_rpm"} 1.0' in metrics


def test_daily_token_budget(data: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("QQRAG_QUOTA_USER_DAILY_TOKENS", "50")
    with app_client() as client:
        assert ask(client, "星尘打印机保修多久？").status_code == 200  # spends more than 50
        refused = ask(client, "星尘打印机支持哪些耗材？")
        assert refused.status_code == 429
        assert "今天" in refused.json()["error"]["message"]


def test_sensitive_words_block_questions_and_mask_answers_with_audit_rows(data: Path):
    words = data / "sensitive_words"
    words.mkdir()
    (words / "banned.txt").write_text("# 测试词表\n违禁品\n易损件\n", encoding="utf-8")
    with app_client() as client:
        blocked = ask(client, "哪里能买到违禁品？").json()
        assert blocked["intent"] == "blocked"
        assert blocked["answer"] == "抱歉，这个请求我不能处理。我只回答知识库相关的问题。"
        masked = ask(client, "星尘打印机保修多久？").json()
        assert "易损件" not in masked["answer"] and "***" in masked["answer"]
        history = client.get(f"/v1/threads/{masked['thread_id']}").json()["messages"]
        assert "易损件" not in history[-1]["content"]
        assert [m["content"] for m in history if m["role"] == "user"] == ["星尘打印机保修多久？"]
        families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
        hits = {
            (s.labels["side"], s.labels["category"]): s.value
            for s in families["qqrag_safety_hits"].samples
            if s.name == "qqrag_safety_hits_total"
        }
        assert hits == {("question", "banned"): 1.0, ("answer", "banned"): 1.0}
    rows = AuditLog(data / "audit.sqlite").turns()
    assert [(r["outcome"], r["safety_hits"]) for r in rows] == [
        ("answered", [{"side": "answer", "word": "易损件", "category": "banned"}]),
        ("blocked", [{"side": "question", "word": "违禁品", "category": "banned"}]),
    ]


def test_gray_release_assigns_profiles_and_records_them(data: Path, fake: FakeOllama):
    (data / "profiles.yaml").write_text(
        "profiles:\n"
        "  thinker:\n"
        "    thinking: true\n"
        "    prompt_variant: concise\n"
        "rules:\n"
        "  - profile: thinker\n"
        "    group_ids: [20002]\n",
        encoding="utf-8",
    )
    with app_client() as client:
        ask(client, "星尘打印机保修多久？")
        ask(client, "星尘打印机保修多久？", group_id="99999")
        turns = client.get("/v1/audit").json()["turns"]
        families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
    assert [(t["thread_id"], t["profile"]) for t in turns] == [
        ("default:qq:group:99999:30003", "default"),
        ("default:qq:group:20002:30003", "thinker"),
    ]
    thinks = [c.get("think") for c in fake.calls("/api/chat")]
    assert thinks == [True, False]
    profiles = {
        s.labels["profile"]
        for s in families["qqrag_turns"].samples
        if s.name == "qqrag_turns_total"
    }
    assert profiles == {"thinker", "default"}


def test_audit_row_holds_the_whole_turn_and_feedback(data: Path):
    with app_client() as client:
        answer = ask(client, "星尘打印机保修多久？").json()
        client.post(
            "/v1/feedback",
            json={"scene": "group", "group_id": "20002", "user_id": "30003", "rating": "good"},
        )
    (row,) = AuditLog(data / "audit.sqlite").turns()
    assert row["trace_id"] == answer["trace_id"]
    assert row["intent"] == "knowledge" and row["outcome"] == "answered"
    assert row["query"] == "星尘打印机保修多久？"
    assert row["cited"] == [answer["citations"][0]["passage_id"]]
    assert row["evidence"][0][0] == answer["citations"][0]["passage_id"]
    assert row["candidates"] and row["ranked"]
    assert set(row["node_seconds"]) == {"classify", "retrieve", "rerank", "answer", "cite_check"}
    assert row["tokens"] > 0 and row["model_calls"] == 1 and row["supported_ratio"] == 1.0
    assert row["feedback"] == "good"


def sse_events(text: str) -> list[tuple[str, Any]]:
    events = []
    for block in text.split("\n\n"):
        if block.strip():
            kind, data = block.split("\n", 1)
            events.append((kind.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return events


def test_only_an_admin_key_gets_the_streamed_trace(data: Path):
    admin, client_key = issue(data, "acme", ["default"], "admin"), issue(data, "acme", ["default"])
    body = {"scene": "private", "user_id": "u1", "text": "星尘打印机保修多久？", "trace": True}
    with app_client() as client:
        refused = client.post("/v1/chat/stream", json=body, headers=bearer(client_key))
        traced = client.post("/v1/chat/stream", json=body, headers=bearer(admin))
        plain = client.post(
            "/v1/chat/stream", json=body | {"trace": False}, headers=bearer(client_key)
        )
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "forbidden"
    nodes = {data["node"]: data for kind, data in sse_events(traced.text) if kind == "node"}
    (call,) = nodes["answer"]["calls"]
    assert call["messages"][0] == {"role": "system", "content": prompts.render("answer")}
    assert nodes["rerank"]["evidence"][0]["text"].startswith("星尘打印机整机保修两年")
    untraced = [data for kind, data in sse_events(plain.text) if kind == "node"]
    assert [e["node"] for e in untraced] == list(nodes)
    assert all("calls" not in e for e in untraced)


def test_openai_client_talks_to_the_same_graph(data: Path):
    with app_client() as client:
        api = openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=client)
        # Chat front ends list the models before the first question.
        assert [model.id for model in api.models.list()] == ["qqrag"]
        first = api.chat.completions.create(
            model="qqrag",
            messages=[{"role": "user", "content": "月光扫地机器人的续航有多久？"}],
            user="u1",
        )
        text = first.choices[0].message.content or ""
        assert (
            "续航 150 分钟" in text
            and "住宅[1]。" in text
            and "来源：\n[1] kb/moonlight.md · 月光扫地机器人" in text
        )
        stream = api.chat.completions.create(
            model="qqrag",
            messages=[{"role": "user", "content": "那它售价多少？"}],
            user="u1",
            stream=True,
        )
        streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream)
        assert streamed.startswith("月光扫地机器人售价 1299 元")
        history = client.get("/v1/threads/default:openai:private:u1").json()["messages"]
        assert len(history) == 4
        with pytest.raises(openai.UnprocessableEntityError):
            api.chat.completions.create(
                model="qqrag", messages=[{"role": "system", "content": "x"}]
            )


async def test_a_burst_past_the_admission_bound_gets_quick_busy_replies(
    tmp_path: Path, fake: FakeOllama
):
    fake.reset()
    env = {
        "QQRAG_DATA_DIR": str(tmp_path / "data"),
        "QQRAG_OLLAMA_URL": fake.url,
        "QQRAG_DEFAULT_DOCS": str(FIXTURES / "kb"),
        "QQRAG_MAX_INFLIGHT_TURNS": "2",
        "QQRAG_QUOTA_USER_RPM": "0",
        "QQRAG_QUOTA_GROUP_RPM": "0",
    }
    with ServiceProcess(env, cwd=tmp_path) as service:
        fake.latency = LatencyModel(fixed_s=1.0)
        try:
            async with httpx.AsyncClient(base_url=service.url, timeout=20) as client:
                bodies = [
                    {"scene": "private", "user_id": f"u{i}", "text": "星尘打印机保修多久？"}
                    for i in range(8)
                ]
                responses = await asyncio.gather(*(client.post("/v1/chat", json=b) for b in bodies))
        finally:
            fake.latency = LatencyModel()
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200, 200, 503, 503, 503, 503, 503, 503]
    busy = next(r for r in responses if r.status_code == 503)
    assert busy.json()["error"] == {"code": "busy", "message": "现在提问的人太多了，请稍后再试。"}
    assert busy.headers["Retry-After"] == "5"
    # Busy replies came back at once, not after the model's second.
    assert all(r.elapsed.total_seconds() < 0.9 for r in responses if r.status_code == 503)


def test_a_planted_link_is_hidden_unless_the_tenant_allows_its_domain(
    tmp_path: Path, fake: FakeOllama
):
    """Over every exit of the real service: /v1/chat, its stream, the OpenAI-compatible
    endpoint (and so the bot, which asks /v1/chat), the thread history and the audit log."""
    fake.reset()
    fake.latency = LatencyModel()
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "driver.md").write_text(
        "# 星尘打印机驱动\n\n星尘打印机驱动请到 https://dl.stardust.example/driver 下载。\n",
        encoding="utf-8",
    )
    data = tmp_path / "data"
    data.mkdir()
    store = TenantStore(data / "tenants.sqlite")
    store.create_tenant("plain", ["default"])
    store.create_tenant("trusting", ["default"], link_domains=["stardust.example"])
    keys = {tenant: store.issue_key(tenant) for tenant in ("plain", "trusting")}
    store.close()
    env = {
        "QQRAG_DATA_DIR": str(data),
        "QQRAG_OLLAMA_URL": fake.url,
        "QQRAG_DEFAULT_DOCS": str(docs),
    }
    question = "星尘打印机驱动在哪里下载？"
    link = "https://dl.stardust.example/driver"
    with (
        ServiceProcess(env, cwd=tmp_path) as service,
        httpx.Client(base_url=service.url, timeout=30) as client,
    ):
        seen: dict[str, list[str]] = {}
        for tenant, key in keys.items():
            body = {"scene": "private", "user_id": "u1", "text": question}
            chat = client.post("/v1/chat", json=body, headers=bearer(key)).json()
            stream = client.post(
                "/v1/chat/stream", json=body | {"user_id": "u2"}, headers=bearer(key)
            ).text
            result = json.loads(stream.split("event: result\ndata: ", 1)[1].split("\n", 1)[0])
            # The token preview too: it used to stream the model's raw text.
            preview = "".join(
                json.loads(line.removeprefix("data: "))["text"]
                for event in stream.split("\n\n")
                if event.startswith("event: token")
                for line in event.splitlines()[1:]
            )
            api = openai.OpenAI(base_url=f"{service.url}/v1", api_key=key)
            completion = api.chat.completions.create(
                model="qqrag", messages=[{"role": "user", "content": question}], user="u3"
            )
            history = client.get(f"/v1/threads/{chat['thread_id']}", headers=bearer(key))
            seen[tenant] = [
                chat["answer"],
                chat["citations"][0]["snippet"],
                result["answer"],
                preview,
                # The node events too: they quote the draft and the answer before the gate.
                stream.split("event: result", 1)[0],
                completion.choices[0].message.content or "",
                history.json()["messages"][-1]["content"],
            ]
        audit = client.get("/v1/audit", headers=bearer(keys["plain"])).json()["turns"]
    assert all(link in text for text in seen["trusting"]), seen["trusting"]
    # No allow-list of its own, and none for the service (QQRAG_LINK_ALLOWLIST is unset).
    assert all(link not in text and "[链接已隐藏]" in text for text in seen["plain"]), seen
    assert seen["plain"][0] == "星尘打印机驱动请到 [链接已隐藏] 下载[1]。"
    assert {row["answer"] for row in audit} == {seen["plain"][0]}
