"""`/v1/chat/completions` as OpenAI clients use it: the conversation is what `messages` says
unless the caller names a thread, content in parts, and the usage of a turn's model calls."""

from __future__ import annotations

import json
from collections.abc import Iterator
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
