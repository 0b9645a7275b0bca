"""The MaxKB backend against the fake MaxKB over real HTTP: three modes, errors, retries, health."""

import json
from collections.abc import AsyncIterator, Callable
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from evals.fakes.maxkb import FIXTURE_KNOWLEDGE_ID, FakeMaxKB, Fault
from tools.base import Passage
from tools.maxkb import (
    AccessLimitNote,
    MaxKBAuthError,
    MaxKBConfig,
    MaxKBConfigError,
    MaxKBError,
    MaxKBKnowledge,
    rows_to_passages,
)

FIXTURES = Path(__file__).parent.parent / "fixtures" / "maxkb"
QUESTION = "广三铁路在哪年建成？"
GOLD = "01a20f1e-20d1-7df1-ae8e-2e09a4a69f7f"  # DEV_2, 广茂铁路
NEAR_MISS = "01a20f1e-20d1-7df1-ae8e-2e1e859b11b4"  # DEV_3, 大莱龙铁路
KB_NAME = "maxkb:cmrc2018-fixture-1795549962"
SECOND_KB = "0b5e3c1a-7d2f-4e8a-9c61-2f1d3a4b5c6d"

Factory = Callable[..., MaxKBKnowledge]


@pytest.fixture
def fake(maxkb: FakeMaxKB) -> FakeMaxKB:
    return maxkb


@pytest.fixture
async def backend(fake: FakeMaxKB) -> AsyncIterator[Factory]:
    created: list[MaxKBKnowledge] = []

    def make(mode: str = "knowledge_hit_test_v2", **overrides: Any) -> MaxKBKnowledge:
        fields: dict[str, Any] = {"url": fake.url, "mode": mode, "timeout": 5.0, "retries": 2}
        if mode == "knowledge_hit_test_v2":
            fields |= {"token": fake.user_token, "knowledge_ids": (FIXTURE_KNOWLEDGE_ID,)}
        elif mode == "app_hit_test_v1":
            fields |= {"api_key": fake.api_key, "application_id": fake.application_id}
        else:
            fields |= {"api_key": fake.api_key}
        knowledge = MaxKBKnowledge(MaxKBConfig(**(fields | overrides)))
        created.append(knowledge)
        return knowledge

    yield make
    for knowledge in created:
        await knowledge.aclose()


def requests_to(fake: FakeMaxKB, fragment: str, method: str | None = None) -> list[dict[str, Any]]:
    return [
        request
        for request in fake.requests
        if fragment in request["path"] and method in (None, request["method"])
    ]


def assert_best_first(passages: list[Passage]) -> None:
    scores = [passage["score"] for passage in passages]
    assert scores == sorted(scores, reverse=True)
    assert len({passage["id"] for passage in passages}) == len(passages)


# ----------------------------------------------------------------------- the three modes


@pytest.mark.parametrize("mode", ["knowledge_hit_test_v2", "app_hit_test_v1", "app_chat_v2"])
async def test_each_mode_finds_the_gold_passage_first(
    fake: FakeMaxKB, backend: Factory, mode: str
) -> None:
    passages = await backend(mode).search(QUESTION, 5)

    assert [passage["id"] for passage in passages][:2] == [GOLD, NEAR_MISS]
    assert_best_first(passages)
    gold = passages[0]
    assert gold["title"] == "广茂铁路"
    assert gold["source"] == "MaxKB · cmrc2018-dev-0-5.md"
    assert gold["kb"] == KB_NAME
    assert "广三铁路于1903年筑成" in gold["text"]


async def test_passages_come_back_sorted_whatever_the_query(
    fake: FakeMaxKB, backend: Factory
) -> None:
    knowledge = backend()
    for query in ("铁路", QUESTION, "足球运动员", "广州", "中国"):
        passages = await knowledge.search(query, 10)
        assert passages
        assert_best_first(passages)
        assert fake.requests[-1]["json"]["top_number"] == 10


async def test_blend_scores_above_one_are_kept_raw(backend: Factory) -> None:
    passages = await backend().search("铁路", 3)

    assert [passage["id"] for passage in passages] == [GOLD, NEAR_MISS]
    assert passages[0]["score"] > 1


async def test_at_most_k_and_nothing_for_an_empty_query(fake: FakeMaxKB, backend: Factory) -> None:
    knowledge = backend()

    assert [passage["id"] for passage in await knowledge.search(QUESTION, 1)] == [GOLD]
    assert await knowledge.search("   ", 5) == []
    assert await knowledge.search(QUESTION, 0) == []
    assert len(requests_to(fake, "/hit_test")) == 1


async def test_several_knowledge_bases_are_merged_and_deduplicated(
    fake: FakeMaxKB, backend: Factory
) -> None:
    fake.add_paragraphs(
        SECOND_KB,
        [
            {
                "id": "p-guangsan",
                "title": "广三铁路",
                "content": "广三铁路在哪年建成？广三铁路于1903年建成，是广东最早的铁路之一。",
                "document_name": "railways.md",
            },
            {"id": "p-tea", "title": "茶", "content": "乌龙茶是半发酵茶。"},
        ],
        name="railways",
    )
    knowledge = backend(knowledge_ids=(FIXTURE_KNOWLEDGE_ID, SECOND_KB, FIXTURE_KNOWLEDGE_ID))

    passages = await knowledge.search(QUESTION, 5)

    assert [passage["id"] for passage in passages] == ["p-guangsan", GOLD, NEAR_MISS]
    assert passages[0]["kb"] == "maxkb:railways"
    assert passages[0]["source"] == "MaxKB · railways.md"
    assert len(requests_to(fake, "/hit_test")) == 3


def test_rows_to_passages_tolerates_chat_record_rows_and_keeps_the_best_duplicate() -> None:
    exchange = json.loads((FIXTURES / "chat_record_get_show_source_on.json").read_text())
    rows = exchange["response"]["body"]["data"]["paragraph_list"]
    worse_copy = {**rows[1], "comprehensive_score": 0.01}
    sparse = {"id": "p-sparse", "content": "只有正文"}

    passages = rows_to_passages([*rows, worse_copy, sparse, {"content": "no id"}], 10)

    assert [passage["id"] for passage in passages][:1] == [GOLD]
    assert sum(passage["id"] == rows[1]["id"] for passage in passages) == 1
    assert_best_first(passages)
    assert passages[-1] == Passage(
        id="p-sparse", title="", source="MaxKB · 未知文档", text="只有正文", score=0.0, kb="maxkb"
    )


async def test_v1_sends_the_raw_key_and_reads_dataset_rows(
    fake: FakeMaxKB, backend: Factory
) -> None:
    passages = await backend("app_hit_test_v1").search(QUESTION, 3)

    assert passages[0]["kb"] == KB_NAME
    (sent,) = requests_to(fake, "/api/application/")
    assert sent["method"] == "PUT"
    assert sent["authorization"] == fake.api_key  # v1 reads the header raw, no "Bearer "
    assert sent["json"] == {
        "query_text": QUESTION,
        "top_number": 3,
        "similarity": 0.0,
        "search_mode": "blend",
    }


async def test_v1_auto_falls_back_to_get_on_an_old_version_and_remembers(
    fake: FakeMaxKB, backend: Factory
) -> None:
    fake.v1_put_supported = False
    knowledge = backend("app_hit_test_v1")

    first = await knowledge.search(QUESTION, 3)
    second = await knowledge.search("铁路", 3)

    assert first[0]["id"] == GOLD and second[0]["id"] == GOLD
    assert knowledge.v1_method == "get"
    assert [request["method"] for request in fake.requests] == ["PUT", "GET", "GET"]
    assert fake.requests[1]["query"] == {
        "query_text": QUESTION,
        "top_number": "3",
        "similarity": "0.0",
        "search_mode": "blend",
    }


async def test_v1_auto_keeps_put_on_a_new_version(fake: FakeMaxKB, backend: Factory) -> None:
    knowledge = backend("app_hit_test_v1")
    await knowledge.search(QUESTION, 3)
    await knowledge.search(QUESTION, 3)

    assert knowledge.v1_method == "put"
    assert [request["method"] for request in fake.requests] == ["PUT", "PUT"]


async def test_v1_method_that_the_version_refuses_is_a_config_error(
    fake: FakeMaxKB, backend: Factory
) -> None:
    with pytest.raises(MaxKBConfigError, match="QQRAG_MAXKB_V1_METHOD") as raised:
        await backend("app_hit_test_v1", v1_method="get").search(QUESTION, 3)
    assert "v1.10.9-lts" in str(raised.value)
    fake.v1_put_supported = False
    with pytest.raises(MaxKBConfigError, match="不接受 PUT"):
        await backend("app_hit_test_v1", v1_method="put").search(QUESTION, 3)


async def test_chat_mode_reuses_its_chat_and_reopens_an_expired_one(
    fake: FakeMaxKB, backend: Factory
) -> None:
    knowledge = backend("app_chat_v2")
    await knowledge.search(QUESTION, 3)
    await knowledge.search("铁路", 3)
    fake.forget_chats()

    passages = await knowledge.search(QUESTION, 3)

    assert passages[0]["id"] == GOLD
    assert len(requests_to(fake, "/chat/api/open")) == 2
    posts = requests_to(fake, "/chat_message/", "POST")
    assert len(posts) == 4  # the message refused for the expired chat is sent again once
    assert posts[0]["json"] == {"message": QUESTION, "stream": False, "re_chat": False}
    assert all(request["authorization"] == f"Bearer {fake.api_key}" for request in fake.requests)


async def test_chat_mode_keeps_the_sources_when_the_model_step_fails(
    fake: FakeMaxKB, backend: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    fake.llm_fails = True

    passages = await backend("app_chat_v2").search(QUESTION, 3)

    assert passages[0]["id"] == GOLD
    assert "模型调用失败" in caplog.text


async def test_show_source_off_is_an_actionable_config_error(
    fake: FakeMaxKB, backend: Factory
) -> None:
    fake.show_source = False
    knowledge = backend("app_chat_v2")

    with pytest.raises(MaxKBConfigError, match="显示知识来源"):
        await knowledge.search(QUESTION, 3)
    health = await knowledge.health()
    assert health.misconfigured and "显示知识来源" in health.message


async def test_a_pasted_bearer_prefix_is_tolerated(fake: FakeMaxKB, backend: Factory) -> None:
    passages = await backend(token=f"Bearer {fake.user_token}").search(QUESTION, 3)

    assert passages[0]["id"] == GOLD
    assert fake.requests[0]["authorization"] == f"Bearer {fake.user_token}"


# ----------------------------------------------------------------------- errors


async def test_rejected_user_token_says_how_to_get_a_new_one(backend: Factory) -> None:
    with pytest.raises(MaxKBAuthError) as raised:
        await backend(token="expired-token").search(QUESTION, 3)

    error = raised.value
    assert (error.status, error.code) == (401, 1002)
    assert "QQRAG_MAXKB_TOKEN" in str(error) and "重新登录" in str(error)


@pytest.mark.parametrize("mode", ["app_chat_v2", "app_hit_test_v1"])
async def test_unknown_application_key_says_how_to_get_a_new_one(
    backend: Factory, mode: str
) -> None:
    with pytest.raises(MaxKBAuthError) as raised:
        await backend(mode, api_key="application-00000000000000000000000000000000").search(
            QUESTION, 3
        )

    error = raised.value
    assert (error.status, error.code) == (401, 500)
    assert "QQRAG_MAXKB_API_KEY" in str(error) and "API Key" in str(error)
    assert "Secret key is invalid" in str(error)


async def test_forbidden_hit_test_explains_that_a_user_token_is_needed(
    fake: FakeMaxKB, backend: Factory
) -> None:
    fake.workspace = "team-a"  # the user has no permission there: HTTP 403 like an app key

    with pytest.raises(MaxKBAuthError, match="只接受用户令牌") as raised:
        await backend().search(QUESTION, 3)
    assert raised.value.status == 403
    assert "app_chat_v2" in str(raised.value)


async def test_v1_key_of_another_application_is_forbidden(backend: Factory) -> None:
    other = "5f0c2d4e-1111-4222-8333-944455556666"
    with pytest.raises(MaxKBAuthError, match="QQRAG_MAXKB_APPLICATION_ID"):
        await backend("app_hit_test_v1", application_id=other).search(QUESTION, 3)


async def test_daily_access_limit_says_to_raise_access_num(
    fake: FakeMaxKB, backend: Factory
) -> None:
    fake.access_num = 0

    with pytest.raises(MaxKBError) as raised:
        await backend("app_chat_v2").search(QUESTION, 3)

    error = raised.value
    assert not isinstance(error, MaxKBAuthError)
    assert (error.status, error.code) == (461, 1002)
    assert "access_num" in str(error) and "10000" in str(error)


async def test_health_reports_the_daily_limit_that_a_search_met(
    fake: FakeMaxKB, tmp_path: Path
) -> None:
    """The chat mode's check reads the profile, which MaxKB does not count: the limit shows
    because a real search met it, in a note another process (doctor) reads too."""
    note = tmp_path / "maxkb-access-limit.json"
    config = MaxKBConfig(url=fake.url, mode="app_chat_v2", api_key=fake.api_key, retries=0)
    serving = MaxKBKnowledge(config, access_limit=AccessLimitNote(note))
    doctor = MaxKBKnowledge(config, access_limit=AccessLimitNote(note))
    try:
        assert (await serving.health()).ok
        fake.access_num = 0
        with pytest.raises(MaxKBError):
            await serving.search(QUESTION, 3)

        for knowledge in (serving, doctor):
            health = await knowledge.health()
            assert not health.serving and not health.misconfigured
            assert "访问次数已用完" in health.message and "461" in health.message
            assert "access_num" in health.fix and "第二天" in health.fix

        fake.access_num = 100
        await serving.search(QUESTION, 3)
        assert (await doctor.health()).ok
    finally:
        await serving.aclose()
        await doctor.aclose()


def test_a_limit_noted_on_an_earlier_day_is_void(tmp_path: Path) -> None:
    day = [date(2026, 12, 1)]
    note = AccessLimitNote(tmp_path / "note.json", today=lambda: day[0])
    note.write("HTTP 461，code 1002")
    assert note.read() == "HTTP 461，code 1002"

    day[0] = date(2026, 12, 2)

    assert note.read() == ""


async def test_unknown_knowledge_id_names_the_knowledge_base(backend: Factory) -> None:
    missing = "cfaa6f68-d994-4935-84ff-a6fc035b7b81"
    with pytest.raises(MaxKBError) as raised:
        await backend(knowledge_ids=(FIXTURE_KNOWLEDGE_ID, missing)).search(QUESTION, 3)

    assert type(raised.value) is MaxKBError
    assert (raised.value.status, raised.value.code) == (200, 500)
    assert missing in str(raised.value) and "Knowledge id does not exist" in str(raised.value)


async def test_unpublished_application(fake: FakeMaxKB, backend: Factory) -> None:
    fake.published = False
    knowledge = backend("app_chat_v2")

    with pytest.raises(MaxKBError, match="not been published"):
        await knowledge.search(QUESTION, 3)
    health = await knowledge.health()
    assert not health.serving and "还没有发布" in health.message


async def test_wrong_admin_path_is_redirected_and_names_the_setting(backend: Factory) -> None:
    """MaxKB answers a path outside its prefixes with a 302 to its admin UI, not a 404."""
    knowledge = backend(admin_path="/maxkb-admin")

    with pytest.raises(MaxKBConfigError, match="QQRAG_MAXKB_ADMIN_PATH") as raised:
        await knowledge.search(QUESTION, 3)

    assert raised.value.status == 302
    assert "/admin/" in str(raised.value) and "代理" not in str(raised.value)
    health = await knowledge.health()
    assert health.misconfigured and "QQRAG_MAXKB_ADMIN_PATH" in health.message


async def test_a_route_maxkb_lacks_is_a_config_error(backend: Factory) -> None:
    """MaxKB's 404 envelope: a wrong URL, prefix or mode does not heal, no fallback hides it."""
    with pytest.raises(MaxKBConfigError, match="没有这个接口") as raised:
        await backend(workspace="default/extra").search(QUESTION, 3)

    assert (raised.value.status, raised.value.code) == (404, 404)


@pytest.mark.parametrize(
    ("fault", "error_type", "phrase"),
    [
        (Fault.CODE_500_IN_200, MaxKBError, "Connection refused"),
        (Fault.HTTP_500, MaxKBError, "HTTP 500"),
        (Fault.AUTH_401, MaxKBAuthError, "QQRAG_MAXKB_TOKEN"),
    ],
)
async def test_faults_that_are_not_retried(
    fake: FakeMaxKB,
    backend: Factory,
    fault: Fault,
    error_type: type[MaxKBError],
    phrase: str,
) -> None:
    fake.fail_next(fault)

    with pytest.raises(error_type, match=phrase):
        await backend().search(QUESTION, 3)
    assert len(fake.requests) == 1


# ----------------------------------------------------------------------- retries


async def test_a_502_is_retried(fake: FakeMaxKB, backend: Factory) -> None:
    fake.fail_next(Fault.HTTP_502)

    passages = await backend().search(QUESTION, 3)

    assert passages[0]["id"] == GOLD
    assert len(fake.requests) == 2


async def test_retries_are_bounded_then_the_502_is_reported(
    fake: FakeMaxKB, backend: Factory
) -> None:
    fake.fail_next(Fault.HTTP_502, times=3)

    with pytest.raises(MaxKBError, match="HTTP 502") as raised:
        await backend(retries=1).search(QUESTION, 3)
    assert raised.value.status == 502
    assert len(fake.requests) == 2


async def test_a_timeout_is_retried(fake: FakeMaxKB, backend: Factory) -> None:
    fake.fail_next(Fault.SLOW)

    passages = await backend(timeout=0.5).search(QUESTION, 3)

    assert passages[0]["id"] == GOLD
    assert len(fake.requests) == 2


async def test_timeouts_on_every_attempt_become_a_maxkb_error(
    fake: FakeMaxKB, backend: Factory
) -> None:
    fake.fail_next(Fault.SLOW, times=2)

    with pytest.raises(MaxKBError, match="超时"):
        await backend(timeout=0.3, retries=1).search(QUESTION, 3)
    assert len(fake.requests) == 2


async def test_a_chat_message_is_never_retried(fake: FakeMaxKB, backend: Factory) -> None:
    knowledge = backend("app_chat_v2")
    await knowledge.search(QUESTION, 3)  # the chat is open now
    sent_before = len(fake.requests)

    fake.fail_next(Fault.HTTP_502)
    with pytest.raises(MaxKBError, match="HTTP 502"):
        await knowledge.search("铁路", 3)

    assert [request["method"] for request in fake.requests[sent_before:]] == ["POST"]


async def test_the_other_chat_calls_are_retried(fake: FakeMaxKB, backend: Factory) -> None:
    fake.fail_next(Fault.HTTP_502)  # hits GET /chat/api/open

    passages = await backend("app_chat_v2").search(QUESTION, 3)

    assert passages[0]["id"] == GOLD
    assert [request["method"] for request in fake.requests] == ["GET", "GET", "POST", "GET"]


async def test_connection_refused_is_reported_with_the_url() -> None:
    fake = FakeMaxKB(knowledge=[]).start()
    url = fake.url
    fake.stop()
    knowledge = MaxKBKnowledge(
        MaxKBConfig(url=url, token="t", knowledge_ids=(FIXTURE_KNOWLEDGE_ID,), retries=1)
    )
    try:
        with pytest.raises(MaxKBError, match="无法连接 MaxKB") as raised:
            await knowledge.search(QUESTION, 3)
        assert url in str(raised.value)
    finally:
        await knowledge.aclose()


# ----------------------------------------------------------------------- health


@pytest.mark.parametrize("mode", ["knowledge_hit_test_v2", "app_hit_test_v1", "app_chat_v2"])
async def test_health_is_up_when_fine(backend: Factory, mode: str) -> None:
    assert (await backend(mode).health()).ok


async def test_health_reports_a_bad_token(backend: Factory) -> None:
    health = await backend(token="expired-token").health()

    assert not health.serving and not health.misconfigured
    assert "QQRAG_MAXKB_TOKEN" in health.message


# ----------------------------------------------------------------------- configuration

APP_KEY = "application-0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize(
    ("fields", "phrases"),
    [
        ({"url": ""}, ["QQRAG_MAXKB_URL"]),
        ({"url": "maxkb:8080"}, ["http://主机:端口"]),
        ({"url": "http://maxkb:8080/admin/"}, ["只写到端口为止", "QQRAG_MAXKB_ADMIN_PATH"]),
        (
            {"mode": "knowledge_hit_test_v2", "knowledge_ids": (FIXTURE_KNOWLEDGE_ID,)},
            ["QQRAG_MAXKB_TOKEN", "用户令牌"],
        ),
        (
            {"mode": "knowledge_hit_test_v2", "api_key": APP_KEY},
            ["QQRAG_MAXKB_TOKEN", "app_chat_v2", "QQRAG_MAXKB_KNOWLEDGE_IDS"],
        ),
        (
            {"mode": "knowledge_hit_test_v2", "token": APP_KEY, "knowledge_ids": ("x",)},
            ["只接受用户令牌", "不是知识库 id"],
        ),
        ({"mode": "app_hit_test_v1"}, ["QQRAG_MAXKB_API_KEY", "QQRAG_MAXKB_APPLICATION_ID"]),
        (
            {"mode": "app_hit_test_v1", "api_key": "user-token", "application_id": "a"},
            ["看起来是用户令牌", "application-"],
        ),
        ({"mode": "app_chat_v2", "token": "user-token"}, ["QQRAG_MAXKB_API_KEY", "用户令牌"]),
        ({"mode": "app_chat_v2", "api_key": APP_KEY, "similarity": 2.5}, ["0 到 2"]),
        ({"mode": "app_chat_v2", "api_key": APP_KEY, "retries": -1}, ["QQRAG_MAXKB_RETRIES"]),
    ],
)
def test_validate_says_what_to_fix(fields: dict[str, Any], phrases: list[str]) -> None:
    config = MaxKBConfig(**({"url": "http://maxkb:8080"} | fields))

    with pytest.raises(MaxKBConfigError) as raised:
        config.validate()
    for phrase in phrases:
        assert phrase in str(raised.value)


@pytest.mark.parametrize(
    "fields",
    [
        {"mode": "knowledge_hit_test_v2", "token": "tok", "knowledge_ids": (FIXTURE_KNOWLEDGE_ID,)},
        {"mode": "app_hit_test_v1", "api_key": APP_KEY, "application_id": "app"},
        {"mode": "app_chat_v2", "api_key": "agent-0123456789abcdef"},
    ],
)
def test_valid_configurations_pass(fields: dict[str, Any]) -> None:
    MaxKBConfig(url="http://maxkb:8080/", **fields).validate()


def test_a_bad_configuration_fails_before_any_call() -> None:
    with pytest.raises(MaxKBConfigError):
        MaxKBKnowledge(MaxKBConfig(url="http://127.0.0.1:9", mode="app_chat_v2"))
