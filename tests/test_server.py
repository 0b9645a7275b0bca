"""End to end: `qqrag serve` in a child process (real uvicorn, real SQLite) and the fake Ollama."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

import server
from agent.settings import get_settings
from evals.fakes.ollama import FakeOllama, LatencyModel
from evals.harness import ServiceProcess
from tests.conftest import FIXTURES

DOCS = Path(__file__).resolve().parents[1] / "docs"


@pytest.fixture(scope="module")
def fake_ollama() -> Iterator[FakeOllama]:
    with FakeOllama() as fake:
        yield fake


@pytest.fixture
def env(tmp_path: Path, fake_ollama: FakeOllama) -> dict[str, str]:
    fake_ollama.reset()
    fake_ollama.latency = LatencyModel()
    return {
        "QQRAG_DATA_DIR": str(tmp_path / "data"),
        "QQRAG_OLLAMA_URL": fake_ollama.url,
        "QQRAG_DEFAULT_DOCS": str(FIXTURES / "kb"),
    }


def ask(service: ServiceProcess, text: str, user: str = "30003", **extra: object) -> dict:
    body = {"platform": "qq", "scene": "group", "group_id": "20002", "user_id": user, "text": text}
    response = httpx.post(f"{service.url}/v1/chat", json=body | extra, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def history(service: ServiceProcess, thread: str) -> httpx.Response:
    return httpx.get(f"{service.url}/v1/threads/{thread}", timeout=10)


def test_follow_up_is_understood_in_the_conversation_and_history_survives_a_restart(
    env: dict[str, str], tmp_path: Path, fake_ollama: FakeOllama
):
    with ServiceProcess(env, cwd=tmp_path) as service:
        first = ask(service, "月光扫地机器人的续航有多久？")
        assert first["intent"] == "knowledge"
        assert first["thread_id"] == "default:qq:group:20002:30003"
        assert (
            first["answer"]
            == "月光扫地机器人是月光电器出品的家用扫地机器人，续航 150 分钟，适合 120 平方米以内的住宅[1]。"
        )
        assert first["citations"][0]["title"] == "月光扫地机器人"
        assert first["degraded"] is False

        # "它" alone would retrieve either product's price: the earlier question names the robot.
        second = ask(service, "那它售价多少？")
        assert (
            second["answer"] == "月光扫地机器人售价 1299 元，旗舰版带自动集尘座，售价 1799 元[1]。"
        )
        assert second["citations"] == [
            {
                "index": 1,
                "title": "月光扫地机器人 › 月光扫地机器人的价格",
                "source": "kb/moonlight.md",
                "passage_id": second["citations"][0]["passage_id"],
                "snippet": "月光扫地机器人售价 1299 元，旗舰版带自动集尘座，售价 1799 元。",
            }
        ]
        # No rewrite call by default: the answer model reads "它" in the conversation it is sent.
        chats = fake_ollama.calls("/api/chat")
        assert not [c for c in chats if c.get("format")]
        assert [m["role"] for m in chats[-1]["messages"]] == ["system", "user", "assistant", "user"]
        assert chats[-1]["messages"][-1]["content"].endswith(
            "<question>\n那它售价多少？\n</question>"
        )

    with ServiceProcess(env, cwd=tmp_path) as service:
        messages = history(service, "default:qq:group:20002:30003").json()["messages"]
        assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
        assert messages[2]["content"] == "那它售价多少？"
        # The restarted service still knows what "它" is.
        third = ask(service, "它的滤网多久换一次？")
        assert (
            third["answer"] == "月光扫地机器人的滤网建议每两个月更换一次，边刷每三个月更换一次[1]。"
        )

        deleted = httpx.delete(f"{service.url}/v1/threads/default:qq:group:20002:30003", timeout=10)
        assert deleted.json() == {"thread_id": "default:qq:group:20002:30003", "deleted": True}
        gone = history(service, "default:qq:group:20002:30003")
        assert gone.status_code == 404
        assert gone.json()["error"]["code"] == "thread_not_found"


def test_group_members_have_separate_threads_and_private_chat_its_own(
    env: dict[str, str], tmp_path: Path
):
    with ServiceProcess(env, cwd=tmp_path) as service:
        ask(service, "星尘打印机保修多久？", user="1")
        ask(service, "月光扫地机器人续航多久？", user="2")
        private = httpx.post(
            f"{service.url}/v1/chat",
            json={
                "scene": "private",
                "user_id": 1,
                "text": "星尘打印机支持哪些耗材？",
                "message_id": 42,
            },
            timeout=30,
        ).json()
        assert private["thread_id"] == "default:qq:private:1"
        assert len(history(service, "default:qq:group:20002:1").json()["messages"]) == 2
        assert len(history(service, "default:qq:group:20002:2").json()["messages"]) == 2
        assert len(history(service, "default:qq:private:1").json()["messages"]) == 2


async def test_turns_of_one_thread_are_serialised_and_of_different_threads_are_not(
    env: dict[str, str], tmp_path: Path, fake_ollama: FakeOllama
):
    delay = 0.6
    with ServiceProcess(env, cwd=tmp_path) as service:
        fake_ollama.latency = LatencyModel(fixed_s=delay)
        async with httpx.AsyncClient(base_url=service.url, timeout=30) as client:

            async def turn(user: str, text: str) -> None:
                body = {"scene": "private", "user_id": user, "text": text}
                response = await client.post("/v1/chat", json=body)
                assert response.status_code == 200

            fake_ollama.reset()
            await asyncio.gather(
                turn("same", "星尘打印机保修多久？"), turn("same", "星尘打印机售价多少？")
            )
            same = sorted(r["at"] for r in fake_ollama.requests if r["path"] == "/api/chat")

            fake_ollama.reset()
            await asyncio.gather(
                turn("a", "星尘打印机保修多久？"), turn("b", "星尘打印机售价多少？")
            )
            different = sorted(r["at"] for r in fake_ollama.requests if r["path"] == "/api/chat")

    # One thread: the second turn's model call starts only after the first turn's has finished.
    assert same[-1] - same[0] >= delay
    # Two threads: both model calls are in flight at the same time.
    assert different[-1] - different[0] < delay / 2
    assert len(same) >= 2 and len(different) == 2


def test_stream_reports_nodes_tokens_and_the_result(env: dict[str, str], tmp_path: Path):
    with ServiceProcess(env, cwd=tmp_path) as service:
        body = {"scene": "private", "user_id": "9", "text": "星尘打印机支持哪些耗材？"}
        with httpx.stream(
            "POST", f"{service.url}/v1/chat/stream", json=body, timeout=30
        ) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            events = []
            for block in response.read().decode().split("\n\n"):
                if block.strip():
                    kind, data = block.split("\n", 1)
                    events.append(
                        (kind.removeprefix("event: "), json.loads(data.removeprefix("data: ")))
                    )
    kinds = [kind for kind, _ in events]
    nodes = [data["node"] for kind, data in events if kind == "node"]
    assert nodes == ["classify", "retrieve", "rerank", "answer", "cite_check"]
    assert kinds[-1] == "result" and "token" in kinds
    result = events[-1][1]
    tokens = "".join(data["text"] for kind, data in events if kind == "token")
    assert (
        tokens
        == result["answer"]
        == "星尘打印机支持 PLA 和 PETG 两种耗材，耗材直径为 1.75 毫米[1]。"
    )
    assert events[0][1]["intent"] == "knowledge"
    assert result["citations"][0]["title"] == "星尘打印机 › 打印材料"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"scene": "private", "user_id": "1", "text": "   "}, "text 不能为空"),
        ({"scene": "private", "user_id": "1", "text": 123}, "text 要是字符串"),
        ({"scene": "group", "user_id": "1", "text": "你好"}, "scene 为 group 时必须提供 group_id"),
        (
            {"scene": "channel", "user_id": "1", "text": "你好"},
            "scene 只能是 group、private 之一",
        ),
        (
            {"scene": "private", "user_id": ["1"], "text": "你好"},
            "user_id 要是字符串",
        ),
        ({"scene": "private", "text": "你好"}, "缺少 user_id"),
        (
            {"scene": "private", "user_id": "1", "text": "长" * 2001},
            "text 超过 2000 字的上限（2001 字）",
        ),
    ],
)
def test_bad_requests_get_a_clear_4xx(
    body: dict,
    message: str,
    env: dict[str, str],
    tmp_path: Path,
    service_for_errors: ServiceProcess,
):
    response = httpx.post(f"{service_for_errors.url}/v1/chat", json=body, timeout=10)
    assert response.status_code == 422
    assert message in response.json()["error"]["message"]


@pytest.fixture(scope="module")
def service_for_errors(
    tmp_path_factory: pytest.TempPathFactory, fake_ollama: FakeOllama
) -> Iterator[ServiceProcess]:
    root = tmp_path_factory.mktemp("errors")
    env = {
        "QQRAG_DATA_DIR": str(root / "data"),
        "QQRAG_OLLAMA_URL": fake_ollama.url,
        "QQRAG_DEFAULT_DOCS": str(FIXTURES / "kb"),
    }
    with ServiceProcess(env, cwd=root) as service:
        yield service


def test_malformed_json_and_unknown_routes(service_for_errors: ServiceProcess):
    response = httpx.post(
        f"{service_for_errors.url}/v1/chat",
        content=b"{not json",
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_request"
    missing = httpx.get(f"{service_for_errors.url}/v1/nothing", timeout=10)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    # The service is still up and answering.
    assert httpx.get(f"{service_for_errors.url}/healthz", timeout=10).json() == {"status": "ok"}


def test_fresh_install_answers_from_its_own_docs_with_and_without_ollama(
    tmp_path: Path, fake_ollama: FakeOllama
):
    question = "qqrag 服务默认监听哪个端口？"
    full_env = {"QQRAG_DATA_DIR": str(tmp_path / "data"), "QQRAG_OLLAMA_URL": fake_ollama.url}
    with ServiceProcess(full_env, cwd=tmp_path) as service:
        ready = httpx.get(f"{service.url}/readyz", timeout=10).json()
        checks = ready.pop("checks")
        assert ready == {"status": "ok"}
        assert checks.pop("storage")["status"] == "ok"  # its message says how much is free
        assert checks == {
            name: {"ok": True, "status": "ok"} for name in ("sqlite", "knowledge", "ollama")
        }
        full = ask(service, question)
        assert full["degraded"] is False
        assert "8000" in full["answer"]
        assert full["citations"][0]["source"].startswith("docs/")
        # The first start says that it imports the guide, in the log the operator reads.
        assert f"首次启动：知识库 default 是空的，正在导入 {DOCS} 里的文档" in service.log()

    down_env = full_env | {"QQRAG_OLLAMA_URL": "http://127.0.0.1:9"}
    with ServiceProcess(down_env, cwd=tmp_path) as service:
        ready = httpx.get(f"{service.url}/readyz", timeout=10).json()
        assert ready["status"] == "degraded"
        assert "无法连接 Ollama" in ready["checks"]["ollama"]["error"]
        degraded = ask(service, question, user="other")
        assert degraded["degraded"] is True
        assert degraded["answer"].startswith("（AI 模型暂时不可用")
        assert "8000" in degraded["answer"]
        assert degraded["citations"] and all(
            c["source"].startswith("docs/") for c in degraded["citations"]
        )
        assert "首次启动" not in service.log()  # imported once


def test_readyz_names_a_missing_model_and_an_empty_knowledge_base(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    from fastapi.testclient import TestClient

    import server
    from agent.settings import get_settings

    with FakeOllama(models=("llama3.2:3b",)) as fake:
        monkeypatch.setenv("QQRAG_OLLAMA_URL", fake.url)
        monkeypatch.setenv("QQRAG_DATA_DIR", str(tmp_path / "data"))
        monkeypatch.setenv("QQRAG_DEFAULT_DOCS", str(tmp_path / "no-docs"))
        get_settings.cache_clear()
        with TestClient(server.create_app()) as client:
            response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "down"
    assert body["checks"]["knowledge"] == {
        "ok": False,
        "status": "down",
        "error": "知识库 default 为空",
        "fix": "先运行 qqrag kb add PATH",
    }
    assert body["checks"]["ollama"] == {
        "ok": False,
        "status": "degraded",
        "error": "Ollama 上缺少模型 qwen3:8b",
        "fix": "运行 ollama pull qwen3:8b",
    }


def test_feedback_is_recorded_against_the_last_answer(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    from fastapi.testclient import TestClient

    import server
    from agent.audit import AuditLog
    from agent.settings import get_settings

    with FakeOllama() as fake:
        monkeypatch.setenv("QQRAG_OLLAMA_URL", fake.url)
        monkeypatch.setenv("QQRAG_DATA_DIR", str(tmp_path / "data"))
        monkeypatch.setenv("QQRAG_DEFAULT_DOCS", str(FIXTURES / "kb"))
        get_settings.cache_clear()
        speaker = {"scene": "private", "user_id": "7"}
        with TestClient(server.create_app()) as client:
            early = client.post("/v1/feedback", json=speaker | {"rating": "good"})
            assert early.status_code == 404
            assert early.json()["error"] == {
                "code": "nothing_to_rate",
                "message": "还没有可以评价的回答",
            }
            answer = client.post("/v1/chat", json=speaker | {"text": "星尘打印机保修多久？"}).json()
            bad = client.post("/v1/feedback", json=speaker | {"rating": "meh"})
            assert bad.status_code == 422
            rated = client.post(
                "/v1/feedback", json=speaker | {"rating": "bad", "comment": "太短", "message_id": 5}
            )
            assert rated.json() == {"ok": True, "thread_id": "default:qq:private:7"}
    rows = AuditLog(tmp_path / "data" / "audit.sqlite").feedback("default:qq:private:7")
    assert [
        (r["rating"], r["comment"], r["question"], r["answer"], r["message_id"]) for r in rows
    ] == [("bad", "太短", "星尘打印机保修多久？", answer["answer"], "5")]


def test_a_turn_killed_midway_is_cleanly_absent_after_restart(
    env: dict[str, str], tmp_path: Path, fake_ollama: FakeOllama
):
    import threading

    service = ServiceProcess(env, cwd=tmp_path).start()
    try:
        ask(service, "星尘打印机保修多久？")
        fake_ollama.latency = LatencyModel(fixed_s=5.0)
        errors: list[Exception] = []

        def doomed() -> None:
            try:
                ask(service, "星尘打印机支持哪些耗材？")
            except Exception as exc:  # the connection dies with the service
                errors.append(exc)

        caller = threading.Thread(target=doomed)
        caller.start()
        deadline = time.monotonic() + 10
        while len(fake_ollama.calls("/api/chat")) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)  # wait until the second turn is inside the model call
        service.stop(kill=True)
        caller.join(timeout=10)
        assert errors, "the interrupted request cannot have succeeded"
    finally:
        service.stop()

    fake_ollama.latency = LatencyModel()
    with ServiceProcess(env, cwd=tmp_path) as restarted:
        messages = history(restarted, "default:qq:group:20002:30003").json()["messages"]
        assert [m["content"] for m in messages if m["role"] == "user"] == ["星尘打印机保修多久？"]
        assert len(messages) == 2
        # The thread goes on normally.
        follow_up = ask(restarted, "星尘打印机支持哪些耗材？")
        assert "PLA" in follow_up["answer"]


def test_an_unexpected_error_is_the_json_envelope_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not plain-text "Internal Server Error": clients and the bot read one error shape."""
    monkeypatch.setenv("QQRAG_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("QQRAG_DEFAULT_DOCS", str(FIXTURES / "kb"))
    monkeypatch.setenv("QQRAG_OLLAMA_URL", "http://127.0.0.1:9")
    get_settings.cache_clear()
    with TestClient(server.create_app(), raise_server_exceptions=False) as client:
        audit = client.app.state.runtime.services.audit  # type: ignore[attr-defined]

        def broken(*args: object, **kwargs: object) -> list[object]:
            raise RuntimeError("disk on fire")

        monkeypatch.setattr(audit, "turns", broken)
        response = client.get("/v1/audit")
        missing = client.get("/v1/nowhere")
        wrong_method = client.get("/v1/chat")
    get_settings.cache_clear()
    assert response.status_code == 500
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {
        "error": {"code": "internal_error", "message": "服务内部出错了，请稍后再试。"}
    }
    assert missing.json() == {
        "error": {"code": "not_found", "message": "没有这个接口：/v1/nowhere"}
    }
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["message"] == "/v1/chat 不接受 GET 请求"


def test_unencodable_text_is_answered_and_unencodable_ids_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lone UTF-16 surrogate is valid JSON but cannot be stored: in a question it becomes
    U+FFFD and the turn is stored whole; in an id (which picks the conversation) it is a 422."""
    monkeypatch.setenv("QQRAG_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("QQRAG_DEFAULT_DOCS", str(FIXTURES / "kb"))
    monkeypatch.setenv("QQRAG_OLLAMA_URL", "http://127.0.0.1:9")
    get_settings.cache_clear()
    speaker = {"platform": "qq", "scene": "private", "user_id": "u1"}
    with TestClient(server.create_app()) as client:

        def post(path: str, body: dict[str, object]) -> httpx.Response:
            # ASCII-escaped JSON carries the lone surrogate as "\ud800", as clients send it.
            headers = {"Content-Type": "application/json"}
            return client.post(path, content=json.dumps(body), headers=headers)

        asked = post("/v1/chat", {**speaker, "text": "星尘打印机\ud800售价多少？"})
        history = client.get(f"/v1/threads/{asked.json()['thread_id']}")
        bad_id = post("/v1/chat", {**speaker, "user_id": "u\udc00", "text": "你好"})
        bad_user = post(
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "你好"}], "user": "\ud800"},
        )
    get_settings.cache_clear()
    assert asked.status_code == 200 and asked.json()["citations"]
    assert history.json()["messages"][0]["content"] == "星尘打印机\ufffd售价多少？"
    assert len(history.json()["messages"]) == 2
    for refused in (bad_id, bad_user):
        assert refused.status_code == 422
        assert "代理字符" in refused.json()["error"]["message"]


def test_invalid_requests_are_explained_in_chinese(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The 422 body names each field and what is wrong with it, for people; `fields` keeps
    pydantic's error types, for programs."""
    monkeypatch.setenv("QQRAG_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("QQRAG_DEFAULT_DOCS", str(FIXTURES / "kb"))
    monkeypatch.setenv("QQRAG_OLLAMA_URL", "http://127.0.0.1:9")
    get_settings.cache_clear()
    speaker = {"scene": "private", "user_id": "7"}
    with TestClient(server.create_app()) as client:
        bad_json = client.post(
            "/v1/chat", content=b"{not json", headers={"Content-Type": "application/json"}
        )
        missing = client.post("/v1/chat", json={"text": "你好"})
        wrong_type = client.post("/v1/chat", json=speaker | {"text": 123, "group_id": True})
        too_long = client.post(
            "/v1/feedback", json=speaker | {"rating": "meh", "comment": "长" * 501}
        )
        long_id = client.post(
            "/v1/chat", json={"scene": "private", "user_id": "1" * 129, "text": "x"}
        )
        query = client.get("/v1/audit", params={"limit": "abc"})
        no_body = client.post("/v1/chat")
    get_settings.cache_clear()
    expected = {
        bad_json: "请求参数有误：请求体不是合法的 JSON（第 2 个字符附近），请检查引号、逗号和括号",
        missing: "请求参数有误：缺少 scene；缺少 user_id",
        wrong_type: "请求参数有误：group_id 要是字符串；text 要是字符串",
        too_long: "请求参数有误：rating 只能是 good、bad 之一；comment 最多 500 个字符",
        long_id: "请求参数有误：user_id 最多 128 个字符",
        query: "请求参数有误：limit 要是整数",
        no_body: "请求参数有误：缺少请求体（JSON 对象）",
    }
    for response, message in expected.items():
        assert response.status_code == 422
        assert response.json()["error"]["code"] == "invalid_request"
        assert response.json()["error"]["message"] == message
    assert missing.json()["error"]["fields"] == [
        {"field": "scene", "type": "missing", "message": "缺少 scene"},
        {"field": "user_id", "type": "missing", "message": "缺少 user_id"},
    ]
    assert bad_json.json()["error"]["fields"][0]["type"] == "json_invalid"


def test_api_docs_are_served_from_the_service_itself() -> None:
    """/docs and /redoc load Swagger UI and ReDoc from the service: they work offline."""
    client = TestClient(server.create_app())
    for page in ("/docs", "/redoc"):
        html = client.get(page)
        assert html.status_code == 200
        assert "://" not in html.text  # nothing from a CDN, no fonts from Google
        assets = re.findall(r'(?:src|href|spec-url)="([^"]+)"|url: \'([^\']+)\'', html.text)
        urls = [src or url for src, url in assets]
        assert any(url.endswith(".js") for url in urls)
        for url in urls:
            assert url.startswith("/") and not url.startswith("//"), url
            assert client.get(url).status_code == 200, url
