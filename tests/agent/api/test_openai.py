"""`/v1/chat/completions` as OpenAI clients use it: the conversation is what `messages` says
unless the caller names a thread, content in parts, and the usage of a turn's model calls."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import openai
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

import server
from agent.audit import AuditLog
from agent.settings import get_settings
from evals.fakes.ollama import FakeOllama
from tests.conftest import FIXTURES

RANGE = "月光扫地机器人的续航有多久？"
FOLLOW_UP = "那它售价多少？"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOllama]:
    with FakeOllama() as server_:
        yield server_


@pytest.fixture
def data(tmp_path: Path, fake: FakeOllama, monkeypatch: pytest.MonkeyPatch) -> Path:
    fake.reset()
    monkeypatch.setenv("QQRAG_OLLAMA_URL", fake.url)
    monkeypatch.setenv("QQRAG_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("QQRAG_DEFAULT_DOCS", str(FIXTURES / "kb"))
    get_settings.cache_clear()
    return tmp_path / "data"


@pytest.fixture
def client(data: Path) -> Iterator[TestClient]:
    with TestClient(server.create_app()) as client:
        yield client


def api(client: TestClient) -> openai.OpenAI:
    return openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=client)


def stored_threads(data: Path) -> set[str]:
    """Every thread the checkpoint database holds anything of."""
    with closing(sqlite3.connect(data / "checkpoints.sqlite")) as db:
        return {
            thread
            for table in ("checkpoints", "writes")
            for (thread,) in db.execute(f"SELECT DISTINCT thread_id FROM {table}")
        }


def said_to_models(fake: FakeOllama) -> list[str]:
    """The text of every message the models were sent, all calls together."""
    return [m.get("content", "") for call in fake.calls("/api/chat") for m in call["messages"]]


def test_callers_without_a_user_never_see_each_others_questions(
    client: TestClient, data: Path, fake: FakeOllama
):
    first = api(client).chat.completions.create(
        model="qqrag", messages=[{"role": "user", "content": RANGE}]
    )
    assert "续航 150 分钟" in (first.choices[0].message.content or "")
    fake.reset()
    # Another caller, or the same one starting over: its conversation holds only this question.
    other = api(client).chat.completions.create(
        model="qqrag", messages=[{"role": "user", "content": FOLLOW_UP}]
    )
    assert other.model_extra is not None and other.model_extra["thread_id"] is None
    assert not any(RANGE in text for text in said_to_models(fake))
    rows = AuditLog(data / "audit.sqlite").turns()
    assert [row["query"] for row in rows] == [FOLLOW_UP, RANGE]
    # Each request ran on a thread of its own, and nothing of either is stored.
    assert len({row["thread_id"] for row in rows}) == 2
    assert stored_threads(data) == set()
    for row in rows:
        assert client.get(f"/v1/threads/{row['thread_id']}").status_code == 404


def test_a_follow_up_whose_earlier_turn_is_only_in_messages_is_answered_in_context(
    client: TestClient, data: Path, fake: FakeOllama
):
    first = api(client).chat.completions.create(
        model="qqrag", messages=[{"role": "user", "content": RANGE}]
    )
    earlier = first.choices[0].message.content or ""
    assert "\n\n来源：\n" in earlier
    fake.reset()
    messages: list[Any] = [
        {"role": "system", "content": "你是一个乐于助人的助手。"},
        {"role": "user", "content": RANGE},
        {"role": "assistant", "content": earlier},
        {"role": "user", "content": FOLLOW_UP},
    ]
    follow_up = api(client).chat.completions.create(model="qqrag", messages=messages)
    assert (follow_up.choices[0].message.content or "").startswith("月光扫地机器人售价 1299 元")
    streamed = api(client).chat.completions.create(model="qqrag", messages=messages, stream=True)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in streamed if chunk.choices)
    assert text.startswith("月光扫地机器人售价 1299 元")
    # The answer model saw the earlier exchange as a stored thread holds it: no source lines,
    # and the caller's system prompt is not qqrag's to follow.
    answer_call = fake.calls("/api/chat")[0]["messages"]
    assert [m["role"] for m in answer_call] == ["system", "user", "assistant", "user"]
    assert answer_call[1]["content"] == RANGE
    assert answer_call[2]["content"] == earlier.split("\n\n来源：\n")[0][:200]
    assert "乐于助人" not in json.dumps(answer_call, ensure_ascii=False)
    rows = AuditLog(data / "audit.sqlite").turns()
    assert rows[0]["query"] == f"{RANGE} {FOLLOW_UP}"
    assert stored_threads(data) == set()
    # An earlier question is held to the length of a question, as when it was asked.
    too_long = client.post(
        "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "长" * 2001}, messages[-1]]},
    )
    assert too_long.status_code == 422
    assert too_long.json()["error"]["message"] == "messages[0] 超过 2000 字的上限（2001 字）"


def test_earlier_messages_in_parts_keep_their_words_and_lose_their_pictures(
    client: TestClient, data: Path
):
    answer = api(client).chat.completions.create(
        model="qqrag",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "月光扫地机器人"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                ],
            },
            {"role": "assistant", "content": [{"type": "text", "text": "请问想了解什么？"}]},
            {"role": "user", "content": [{"type": "text", "text": "它的续航有多久？"}]},
        ],
    )
    assert "续航 150 分钟" in (answer.choices[0].message.content or "")
    assert AuditLog(data / "audit.sqlite").turns()[0]["query"] == "月光扫地机器人 它的续航有多久？"


def test_a_named_thread_is_kept_by_the_service_and_the_messages_history_is_not_read(
    client: TestClient, data: Path
):
    api(client).chat.completions.create(
        model="qqrag", messages=[{"role": "user", "content": RANGE}], user="u1"
    )
    # The service's history, not the one sent, is the conversation of a named thread.
    follow_up = api(client).chat.completions.create(
        model="qqrag",
        messages=[
            {"role": "user", "content": "星尘打印机保修多久？"},
            {"role": "assistant", "content": "星尘打印机整机保修两年[1]。"},
            {"role": "user", "content": FOLLOW_UP},
        ],
        # The header names a thread as `user` does.
        extra_headers={"X-QQRAG-Thread": "u1"},
    )
    assert (follow_up.choices[0].message.content or "").startswith("月光扫地机器人售价 1299 元")
    assert follow_up.model_extra is not None
    assert follow_up.model_extra["thread_id"] == "default:openai:private:u1"
    assert stored_threads(data) == {"default:openai:private:u1"}


def test_content_in_parts_is_read_and_a_picture_in_the_question_is_refused(
    client: TestClient, data: Path
):
    parts = api(client).chat.completions.create(
        model="qqrag",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "请问："},
                    {"type": "text", "text": RANGE},
                ],
            }
        ],
    )
    assert "续航 150 分钟" in (parts.choices[0].message.content or "")
    assert AuditLog(data / "audit.sqlite").turns()[0]["question"] == f"请问：\n{RANGE}"
    picture = client.post(
        "/v1/chat/completions",
        json={
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "这张图里的机器人续航多久？"},
                        {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}},
                    ],
                }
            ]
        },
    )
    assert picture.status_code == 422
    assert picture.json() == {
        "error": {
            "code": "invalid_request",
            "message": "qqrag 只能回答文字问题，不支持 image_url 类型的内容，请用文字提问",
        }
    }
    no_text = client.post(
        "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": [{"type": "text"}]}]},
    )
    assert no_text.status_code == 422
    assert "缺少 text 字段" in no_text.json()["error"]["message"]


def test_usage_reports_the_prompt_and_completion_tokens_of_the_turn(client: TestClient, data: Path):
    messages: list[Any] = [{"role": "user", "content": RANGE}]
    whole = api(client).chat.completions.create(model="qqrag", messages=messages)
    usage = whole.usage
    assert usage is not None and usage.prompt_tokens > usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert AuditLog(data / "audit.sqlite").turns()[0]["tokens"] == usage.total_tokens
    families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
    counted = {
        s.labels["kind"]: s.value
        for s in families["qqrag_tokens"].samples
        if s.name == "qqrag_tokens_total"
    }
    assert counted == {"prompt": usage.prompt_tokens, "completion": usage.completion_tokens}


def test_a_stream_that_asks_for_usage_ends_with_a_usage_chunk(client: TestClient, data: Path):
    messages: list[Any] = [{"role": "user", "content": RANGE}]
    whole = api(client).chat.completions.create(model="qqrag", messages=messages, user="u1")
    assert whole.usage is not None
    # One more chunk before [DONE], without choices, with the usage of the same question in a
    # conversation as new; the other chunks carry a null usage, as OpenAI's do.
    asked = {"stream": True, "stream_options": {"include_usage": True}, "user": "u2"}
    stream = client.post("/v1/chat/completions", json={"messages": messages, **asked})
    chunks = [
        json.loads(line.removeprefix("data: "))
        for line in stream.text.splitlines()
        if line.startswith("data: {")
    ]
    assert stream.text.endswith("data: [DONE]\n\n")
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == whole.usage.model_dump(exclude_none=True)
    assert all(chunk["usage"] is None for chunk in chunks[:-1])
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    # Not asked for: no usage anywhere.
    plain = client.post(
        "/v1/chat/completions", json={"messages": messages, "stream": True, "user": "u3"}
    )
    assert "usage" not in plain.text
