"""The fake MaxKB over real HTTP: captured exchanges replayed, validation, auth, chat, faults."""

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from evals.fakes.maxkb import (
    FIXTURE_KNOWLEDGE_ID,
    FakeMaxKB,
    Fault,
    keyword_rank,
    load_fixture_knowledge,
    score,
)
from tests.conftest import fake_in_foreground, when_up

FIXTURES = Path(__file__).parents[2] / "fixtures" / "maxkb"
LIVE = Path(__file__).parents[2] / "fixtures" / "maxkb-live"
LIVE_KNOWLEDGE_ID = "01a23c4c-c16b-7572-b9ac-aa5564ef5b8f"
EXPIRED_TOKEN = "fake-maxkb-logged-out-token"
QUESTION = "广三铁路在哪年建成？"
GOLD = "01a20f1e-20d1-7df1-ae8e-2e09a4a69f7f"
HIT_TEST = f"/admin/api/workspace/default/knowledge/{FIXTURE_KNOWLEDGE_ID}/hit_test"
REPLAYED = sorted(
    path.name for path in FIXTURES.glob("*.json") if path.name.startswith(("hit_test_", "chat_"))
)


@pytest.fixture
def fake(maxkb: FakeMaxKB) -> FakeMaxKB:
    return maxkb


@pytest.fixture
def client(fake: FakeMaxKB) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fake.url, timeout=10) as http:
        yield http


def user(fake: FakeMaxKB) -> dict[str, str]:
    return {"Authorization": f"Bearer {fake.user_token}"}


def app(fake: FakeMaxKB) -> dict[str, str]:
    return {"Authorization": f"Bearer {fake.api_key}"}


def hit_test(client: httpx.Client, fake: FakeMaxKB, **fields: Any) -> httpx.Response:
    body = {"query_text": QUESTION, "top_number": 10, "similarity": 0.0, "search_mode": "blend"}
    return client.put(HIT_TEST, headers=user(fake), json=body | fields)


def open_chat(client: httpx.Client, fake: FakeMaxKB) -> str:
    chat_id: str = client.get("/chat/api/open", headers=app(fake)).json()["data"]
    return chat_id


def ask(client: httpx.Client, fake: FakeMaxKB, chat_id: str, message: str) -> httpx.Response:
    body = {"message": message, "stream": False, "re_chat": False}
    return client.post(f"/chat/api/chat_message/{chat_id}", headers=app(fake), json=body)


def envelope(response: httpx.Response) -> tuple[int, int, str]:
    body = response.json()
    assert list(body) == ["code", "message", "data"]
    return response.status_code, body["code"], body["message"]


# ----------------------------------------------------------------------- captured exchanges


def prepare(fake: FakeMaxKB, client: httpx.Client, name: str, path: str) -> str:
    """Set the fake up like the MaxKB the exchange was captured from; return the path to use."""
    exchange = json.loads((FIXTURES / name).read_text())
    if name == "hit_test_ollama_embedding_kb.json":
        rows = exchange["response"]["body"]["data"]
        fake.add_paragraphs(rows[0]["knowledge_id"], rows, name=rows[0]["knowledge_name"])
    if name.startswith("chat_message_") and name != "chat_message_err_unknown_chat_id.json":
        path = re.sub(r"[^/]+$", open_chat(client, fake), path)
    if name.startswith("chat_record_get_"):
        chat_id = open_chat(client, fake)
        record_id = ask(client, fake, chat_id, QUESTION).json()["data"]["id"]
        path = f"/chat/api/historical_conversation/{chat_id}/record/{record_id}"
    # The first capture's server answered in English unless asked for Chinese.
    fake.language = "en"
    fake.access_num = 0 if name == "chat_message_err_daily_access_limit.json" else 100
    fake.llm_fails = name == "chat_message_nonstream_llm_exception.json"
    fake.show_source = name != "chat_record_get_show_source_off.json"
    fake.published = name != "chat_open_err_unpublished_application.json"
    return path


def credential(fake: FakeMaxKB, header: str) -> str:
    return (
        header.replace("<user-token>", fake.user_token)
        .replace("application-<key-of-unpublished-app>", fake.api_key)
        .replace("application-<key>", fake.api_key)
    )


def assert_same_shape(got: Any, want: Any) -> None:
    if isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want)
        for key in ("paragraph_list", "knowledge_list", "answer_list"):
            if want.get(key):
                assert_same_shape(got[key], want[key])
    elif isinstance(want, list):
        assert isinstance(got, list)
        assert bool(got) == bool(want)
        for row in got:
            assert_same_shape(row, want[0])
    else:
        assert type(got) is type(want)


@pytest.mark.parametrize("name", REPLAYED)
def test_captured_requests_get_answers_of_the_captured_shape(
    fake: FakeMaxKB, client: httpx.Client, name: str
) -> None:
    exchange = json.loads((FIXTURES / name).read_text())
    request, want = exchange["request"], exchange["response"]
    path = prepare(fake, client, name, request["path"])
    headers = {}
    if "Authorization" in request["headers"]:
        headers["Authorization"] = credential(fake, request["headers"]["Authorization"])
    if name.endswith("_zh.json"):
        headers["Accept-Language"] = "zh-CN"

    response = client.request(request["method"], path, headers=headers, json=request["body"])

    body = response.json()
    assert response.status_code == want["status"]
    assert list(body) == list(want["body"])
    assert body["code"] == want["body"]["code"]
    if body["code"] != 200:
        assert body["message"] == want["body"]["message"]
    assert_same_shape(body["data"], want["body"]["data"])


def test_the_fixture_knowledge_is_the_captured_one() -> None:
    knowledge = load_fixture_knowledge(FIXTURES)

    assert knowledge.id == FIXTURE_KNOWLEDGE_ID
    assert knowledge.name == "cmrc2018-fixture-1795549962"
    assert [p["position"] for p in knowledge.paragraphs] == [1, 2, 3, 4, 5, 6]
    assert knowledge.paragraphs[2]["id"] == GOLD
    assert knowledge.paragraphs[2]["title"] == "广茂铁路"
    assert len({p["id"] for p in knowledge.paragraphs}) == 6


# ----------------------------------------------------------------------- scoring


def test_relevant_paragraphs_score_higher() -> None:
    paragraphs = {p["title"]: p for p in load_fixture_knowledge(FIXTURES).paragraphs}
    gold, football = paragraphs["广茂铁路"], paragraphs["赵鹏"]

    for mode in ("embedding", "blend"):
        assert (score(QUESTION, gold, mode) or 0) > (score(QUESTION, football, mode) or 0)
    assert score(QUESTION, gold, "keywords") is None  # keywords needs every query word
    assert keyword_rank("铁路", gold["content"]) is not None
    assert (score("铁路", gold, "blend") or 0) > 1


def test_rows_come_back_unsorted_but_stable(fake: FakeMaxKB, client: httpx.Client) -> None:
    disordered = False
    for query in ("铁路", QUESTION, "足球运动员", "广州", "中国"):
        first = hit_test(client, fake, query_text=query).json()["data"]
        again = hit_test(client, fake, query_text=query).json()["data"]
        assert first == again
        scores = [row["comprehensive_score"] for row in first]
        assert scores, query
        disordered |= scores != sorted(scores, reverse=True)
    assert disordered


def test_similarity_threshold_is_strict(fake: FakeMaxKB, client: httpx.Client) -> None:
    rows = hit_test(client, fake, search_mode="embedding").json()["data"]
    ranked = sorted(rows, key=lambda row: -row["comprehensive_score"])
    threshold = ranked[1]["comprehensive_score"]

    above = hit_test(client, fake, search_mode="embedding", similarity=threshold).json()["data"]

    assert [row["id"] for row in above] == [ranked[0]["id"]]


def test_modes_and_top_number(fake: FakeMaxKB, client: httpx.Client) -> None:
    blend = hit_test(client, fake, query_text="铁路", top_number=1).json()["data"]
    keywords = hit_test(client, fake, search_mode="keywords").json()["data"]
    railway = hit_test(client, fake, query_text="铁路", search_mode="keywords").json()["data"]

    assert [row["id"] for row in blend] == [GOLD]
    assert blend[0]["comprehensive_score"] > 1
    assert blend[0]["similarity"] == blend[0]["comprehensive_score"]
    assert keywords == []
    assert {row["title"] for row in railway} == {"广茂铁路", "大莱龙铁路"}


def test_paragraphs_added_by_a_test_are_searchable(fake: FakeMaxKB, client: httpx.Client) -> None:
    other = "0b5e3c1a-7d2f-4e8a-9c61-2f1d3a4b5c6d"
    fake.add_paragraphs(other, [{"id": "p1", "title": "茶", "content": "乌龙茶是半发酵茶。"}])

    response = client.put(
        HIT_TEST.replace(FIXTURE_KNOWLEDGE_ID, other),
        headers=user(fake),
        json={"query_text": "乌龙茶", "top_number": 3, "similarity": 0, "search_mode": "blend"},
    )

    (row,) = response.json()["data"]
    assert row["id"] == "p1" and row["knowledge_id"] == other
    assert row["knowledge_name"] == f"knowledge-{other[:8]}"
    assert row["document_name"] and row["document_id"] and row["status"] == "nn2"


def prepare_live(fake: FakeMaxKB, client: httpx.Client, name: str, path: str) -> str:
    """Set the fake up like the live MaxKB of the second capture; return the path to use."""
    fake.key_active = not name.startswith("probe_key_disabled_")
    fake.expired_tokens = {EXPIRED_TOKEN}
    fake.access_num = 0 if name.endswith("_access_limit.json") else 100
    path = path.replace(LIVE_KNOWLEDGE_ID, FIXTURE_KNOWLEDGE_ID)
    if "/chat_message/" in path:
        path = re.sub(r"[^/]+$", open_chat(client, fake), path)
    return path


@pytest.mark.parametrize("name", sorted(path.name for path in LIVE.glob("*.json")))
def test_live_requests_get_the_live_answers(
    fake: FakeMaxKB, client: httpx.Client, name: str
) -> None:
    exchange = json.loads((LIVE / name).read_text())
    request, want = exchange["request"], exchange["response"]
    path = prepare_live(fake, client, name, request["path"])
    headers = {}
    if "authorization" in request["headers"]:
        header = request["headers"]["authorization"]
        headers["Authorization"] = credential(fake, header).replace(
            "<logged-out-user-token>", EXPIRED_TOKEN
        )

    response = client.request(request["method"], path, headers=headers, json=request["body"])

    assert response.status_code == want["status"]
    if want["status"] == 302:
        assert response.headers["location"] == want["headers"]["location"]
    elif want["content_type"].startswith("text/html"):
        assert response.headers["content-type"].startswith("text/html")
        assert response.text == want["body"]
    else:
        assert response.json() == {**want["body"], "data": None}


# ----------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"query_text": None}, "query text:This field may not be null."),
        ({"query_text": " "}, "query text:This field may not be blank."),
        ({"top_number": 0}, "top number:Ensure this value is greater than or equal to 1."),
        ({"top_number": 10001}, "top number:Ensure this value is less than or equal to 10000."),
        ({"top_number": "many"}, "top number:A valid integer is required."),
        ({"similarity": 2.5}, "similarity:Ensure this value is less than or equal to 2."),
        ({"similarity": -0.1}, "similarity:Ensure this value is greater than or equal to 0."),
        ({"search_mode": None}, "search mode:This field may not be null."),
        ({"search_mode": "hybrid"}, "search mode:The type only supports embedding|keywords|blend"),
        ({"search_mode": "embedding_v2"}, "'embedding_v2' is not a valid SearchMode"),
        ({"search_mode": "my_keywords_x"}, "'my_keywords_x' is not a valid SearchMode"),
        ({"search_mode": "preblend"}, "'preblend' is not a valid SearchMode"),
    ],
)
def test_hit_test_validation(
    fake: FakeMaxKB, client: httpx.Client, fields: dict[str, Any], message: str
) -> None:
    fake.language = "en"
    assert envelope(hit_test(client, fake, **fields)) == (200, 500, message)


def test_validation_follows_accept_language(fake: FakeMaxKB, client: httpx.Client) -> None:
    fake.language = "en"
    response = client.put(
        HIT_TEST, headers=user(fake) | {"Accept-Language": "zh-CN"}, json={"top_number": 3}
    )

    assert envelope(response) == (200, 500, "query text:该字段不能为 null。")


def test_validation_is_chinese_by_default_and_english_when_asked(
    fake: FakeMaxKB, client: httpx.Client
) -> None:
    default = client.put(HIT_TEST, headers=user(fake), json={"top_number": 3})
    english = client.put(
        HIT_TEST, headers=user(fake) | {"Accept-Language": "en"}, json={"top_number": 3}
    )

    assert envelope(default) == (200, 500, "query text:该字段不能为 null。")
    assert envelope(english) == (200, 500, "query text:This field may not be null.")


@pytest.mark.parametrize(
    ("knowledge_id", "message"),
    [
        ("not-a-uuid", "id:Must be a valid UUID."),
        ("cfaa6f68-d994-4935-84ff-a6fc035b7b81", "Knowledge id does not exist"),
    ],
)
def test_bad_knowledge_ids(
    fake: FakeMaxKB, client: httpx.Client, knowledge_id: str, message: str
) -> None:
    response = client.put(
        HIT_TEST.replace(FIXTURE_KNOWLEDGE_ID, knowledge_id),
        headers=user(fake),
        json={"query_text": QUESTION, "top_number": 3, "similarity": 0, "search_mode": "blend"},
    )

    assert envelope(response) == (200, 500, message)


def test_invalid_json_is_a_code_500(fake: FakeMaxKB, client: httpx.Client) -> None:
    response = client.put(HIT_TEST, headers=user(fake), content=b"{not json")

    status, code, message = envelope(response)
    assert (status, code) == (200, 500) and message.startswith("JSON parse error")


# ----------------------------------------------------------------------- authentication


@pytest.mark.parametrize(
    ("route", "authorization", "expected"),
    [
        ("hit_test", None, (401, 1003, "Not logged in, please log in first")),
        (
            "hit_test",
            "{user}",
            (401, 1002, "Authentication information is incorrect! illegal user"),
        ),
        (
            "hit_test",
            "Bearer nope",
            (401, 1002, "Authentication information is incorrect! illegal user"),
        ),
        ("hit_test", "Bearer {key}", (403, 403, "No permission to access")),
        ("hit_test", "Bearer application-bad", (401, 500, "Secret key is invalid")),
        ("open", None, (401, 1003, "Not logged in, please log in first")),
        ("open", "{key}", (401, 1002, "Authentication information is incorrect! illegal user")),
        ("open", "Bearer application-bad", (401, 500, "Secret key is invalid")),
        ("open", "Bearer {user}", (200, 500, "'Auth' object has no attribute 'application_id'")),
        (
            "v1",
            "Bearer {key}",
            (401, 1002, "Authentication information is incorrect! illegal user"),
        ),
        ("v1", "application-bad", (401, 500, "Secret key is invalid")),
    ],
)
def test_authentication_by_token_kind(
    fake: FakeMaxKB,
    client: httpx.Client,
    route: str,
    authorization: str | None,
    expected: tuple[int, int, str],
) -> None:
    headers = {}
    if authorization is not None:
        headers["Authorization"] = authorization.format(user=fake.user_token, key=fake.api_key)
    body = {"query_text": QUESTION, "top_number": 3, "similarity": 0, "search_mode": "blend"}
    if route == "hit_test":
        response = client.put(HIT_TEST, headers=headers, json=body)
    elif route == "open":
        response = client.get("/chat/api/open", headers=headers)
    else:
        response = client.put(
            f"/api/application/{fake.application_id}/hit_test", headers=headers, json=body
        )

    assert envelope(response) == expected


# ----------------------------------------------------------------------- v1


def test_v1_put_on_a_new_version(fake: FakeMaxKB, client: httpx.Client) -> None:
    fake.language = "en"
    path = f"/api/application/{fake.application_id}/hit_test"
    body: dict[str, Any] = {
        "query_text": QUESTION,
        "top_number": 2,
        "similarity": 0,
        "search_mode": "blend",
    }

    response = client.put(path, headers={"Authorization": fake.api_key}, json=body)
    refused = client.get(path, headers={"Authorization": fake.api_key}, params=body)

    payload = response.json()
    assert (payload["code"], payload["message"]) == (200, "成功")
    assert {"dataset_id", "dataset_name"} <= set(payload["data"][0])
    assert not {"knowledge_id", "knowledge_name"} & set(payload["data"][0])
    assert envelope(refused) == (200, 500, 'Method "GET" not allowed.')


def test_v1_get_only_on_an_old_version(fake: FakeMaxKB, client: httpx.Client) -> None:
    fake.language = "en"
    fake.v1_put_supported = False
    path = f"/api/application/{fake.application_id}/hit_test"
    params = {"query_text": QUESTION, "top_number": "2", "similarity": "0", "search_mode": "blend"}

    refused = client.put(path, headers={"Authorization": fake.api_key}, json=params)
    response = client.get(path, headers={"Authorization": fake.api_key}, params=params)

    # MaxKB's exception handler turns DRF's 405 into HTTP 200 + code 500, in v1 as in v2.
    assert envelope(refused) == (200, 500, 'Method "PUT" not allowed.')
    assert GOLD in [row["id"] for row in response.json()["data"]]


def test_v1_unknown_application(fake: FakeMaxKB, client: httpx.Client) -> None:
    path = "/api/application/5f0c2d4e-1111-4222-8333-944455556666/hit_test"
    body = {"query_text": QUESTION, "top_number": 2, "similarity": 0, "search_mode": "blend"}

    by_key = client.put(path, headers={"Authorization": fake.api_key}, json=body)
    by_user = client.put(path, headers={"Authorization": fake.user_token}, json=body)

    assert envelope(by_key) == (403, 403, "No permission to access")
    assert envelope(by_user) == (200, 500, "Application id does not exist")


# ----------------------------------------------------------------------- chat


def test_chat_flow_with_and_without_sources(fake: FakeMaxKB, client: httpx.Client) -> None:
    chat_id = open_chat(client, fake)
    answer = ask(client, fake, chat_id, QUESTION).json()["data"]
    record_path = f"/chat/api/historical_conversation/{chat_id}/record/{answer['id']}"

    with_sources = client.get(record_path, headers=app(fake)).json()["data"]
    fake.show_source = False
    without = client.get(record_path, headers=app(fake)).json()["data"]
    profile = client.get("/chat/api/application/profile", headers=app(fake)).json()["data"]

    assert answer["chat_id"] == chat_id and "1903" in answer["content"]
    assert with_sources["problem_text"] == QUESTION
    assert GOLD in [row["id"] for row in with_sources["paragraph_list"]]
    assert with_sources["knowledge_list"][0]["id"] == FIXTURE_KNOWLEDGE_ID
    assert "paragraph_list" not in without and "knowledge_list" not in without
    assert profile["show_source"] is False and profile["is_publish"] is True


def test_unknown_records_and_expired_chats(fake: FakeMaxKB, client: httpx.Client) -> None:
    chat_id = open_chat(client, fake)
    record_id = ask(client, fake, chat_id, QUESTION).json()["data"]["id"]
    other_chat = open_chat(client, fake)

    wrong_chat = client.get(
        f"/chat/api/historical_conversation/{other_chat}/record/{record_id}", headers=app(fake)
    )
    fake.forget_chats()
    expired = ask(client, fake, chat_id, QUESTION)

    assert envelope(wrong_chat) == (200, 500, "Conversation does not exist")
    assert envelope(expired) == (500, 500, "Conversation does not exist")


def test_daily_access_limit_counts_messages(fake: FakeMaxKB, client: httpx.Client) -> None:
    fake.access_num = 2
    chat_id = open_chat(client, fake)

    answers = [ask(client, fake, chat_id, QUESTION) for _ in range(3)]
    fake.reset()
    after_reset = ask(client, fake, open_chat(client, fake), QUESTION)

    assert [answer.status_code for answer in answers] == [200, 200, 461]
    assert envelope(answers[2]) == (461, 1002, "The number of visits exceeds today's visits")
    assert after_reset.status_code == 200


def test_chat_message_requires_its_fields_and_no_streaming(
    fake: FakeMaxKB, client: httpx.Client
) -> None:
    fake.language = "en"
    chat_id = open_chat(client, fake)
    path = f"/chat/api/chat_message/{chat_id}"

    no_message = client.post(path, headers=app(fake), json={"stream": False, "re_chat": False})
    streaming = client.post(
        path, headers=app(fake), json={"message": "q", "stream": True, "re_chat": False}
    )
    wrong_method = client.get(path, headers=app(fake))

    assert envelope(no_message) == (200, 500, "message:This field is required.")
    assert envelope(streaming)[:2] == (200, 500)
    assert envelope(wrong_method) == (200, 500, 'Method "GET" not allowed.')


# ----------------------------------------------------------------------- faults and recording


def test_faults_apply_in_order_to_any_route_and_reset_clears_them(
    fake: FakeMaxKB, client: httpx.Client
) -> None:
    for fault in (Fault.HTTP_500, Fault.HTTP_502, Fault.CODE_500_IN_200, Fault.AUTH_401):
        fake.fail_next(fault)

    answers = [
        hit_test(client, fake),
        client.get("/chat/api/open", headers=app(fake)),
        client.get("/chat/api/application/profile", headers=app(fake)),
        hit_test(client, fake),
    ]

    assert envelope(answers[0]) == (500, 500, "Internal Server Error")
    assert answers[1].status_code == 502 and "Bad Gateway" in answers[1].text
    assert answers[1].headers["content-type"].startswith("text/html")
    assert envelope(answers[2])[:2] == (200, 500)
    assert envelope(answers[3])[:2] == (401, 1002)
    assert hit_test(client, fake).json()["code"] == 200
    fake.fail_next(Fault.HTTP_500)
    fake.reset()
    assert hit_test(client, fake).json()["code"] == 200


def test_requests_are_recorded(fake: FakeMaxKB, client: httpx.Client) -> None:
    hit_test(client, fake, top_number=2)
    client.get("/api/application/x/hit_test", params={"query_text": "q"})
    client.get("/no/such/route")

    first, second, third = fake.requests
    assert first["method"] == "PUT" and first["path"] == HIT_TEST
    assert first["authorization"] == f"Bearer {fake.user_token}"
    assert first["json"]["top_number"] == 2
    assert second["query"] == {"query_text": "q"} and second["authorization"] is None
    assert third["path"] == "/no/such/route"


def test_slow_fault_times_out_clients_and_stop_interrupts_it() -> None:
    fake = FakeMaxKB(knowledge=[]).start()
    fake.fail_next(Fault.SLOW)
    try:
        with pytest.raises(httpx.ReadTimeout):
            httpx.get(f"{fake.url}/chat/api/open", timeout=0.3)
    finally:
        started = time.monotonic()
        fake.stop()
    assert time.monotonic() - started < 5


def test_stopped_fake_refuses_connections_and_restarts_on_the_same_url() -> None:
    fake = FakeMaxKB(knowledge=[]).start()
    url = fake.url
    fake.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/chat/api/open", timeout=2)
    with fake:
        assert fake.url == url
        assert httpx.get(f"{url}/chat/api/open", timeout=2).status_code == 401


def test_module_runs_in_the_foreground() -> None:
    body = {"query_text": QUESTION, "top_number": 1, "similarity": 0, "search_mode": "blend"}
    auth = {"Authorization": "Bearer fake-maxkb-user-token"}
    with fake_in_foreground("evals.fakes.maxkb", "--fixtures", str(FIXTURES)) as url:
        response = when_up(
            lambda: httpx.put(f"{url}{HIT_TEST}", headers=auth, json=body, timeout=1)
        )
    assert response.json()["data"][0]["id"] == GOLD
