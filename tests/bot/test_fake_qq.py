"""The fake official QQ API refuses what the real one refuses."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from evals.fakes import qq as fake_qq


@pytest.fixture(scope="module")
def fake() -> Iterator[fake_qq.FakeQQ]:
    with fake_qq.FakeQQ() as server:
        yield server


@pytest.fixture
def api(fake: fake_qq.FakeQQ) -> Iterator[httpx.Client]:
    fake.reset()
    token = httpx.post(
        fake.auth_url, json={"appId": fake_qq.APP_ID, "clientSecret": fake_qq.SECRET}
    ).json()
    assert token == {"access_token": fake.access_token, "expires_in": "7200"}
    headers = {"Authorization": f"QQBot {fake.access_token}", "X-Union-Appid": fake_qq.APP_ID}
    with httpx.Client(base_url=fake.url, headers=headers) as client:
        yield client


def reply(content: str, seq: int, msg_id: str = "ROBOT1.0_m") -> dict[str, object]:
    return {"msg_type": 0, "content": content, "msg_id": msg_id, "msg_seq": seq}


def test_wrong_credentials_get_no_token(fake: fake_qq.FakeQQ) -> None:
    wrong = {"appId": fake_qq.APP_ID, "clientSecret": "nope"}
    assert httpx.post(fake.auth_url, json=wrong).json()["code"] == 100016
    unknown = {"appId": "1", "clientSecret": fake_qq.SECRET}
    assert httpx.post(fake.auth_url, json=unknown).json()["code"] == 100007


def test_messages_need_the_access_token(fake: fake_qq.FakeQQ) -> None:
    response = httpx.post(f"{fake.url}v2/groups/G1/messages", json=reply("你好", 1))
    assert (response.status_code, response.json()["code"]) == (401, 11244)


def test_passive_replies_are_recorded_and_limited(api: httpx.Client, fake: fake_qq.FakeQQ) -> None:
    for seq in range(1, 6):
        response = api.post("v2/users/U1/messages", json=reply(f"第 {seq} 条", seq))
        assert response.status_code == 200
        assert set(response.json()) == {"id", "timestamp"}
    assert [m.body["msg_seq"] for m in fake.sent] == [1, 2, 3, 4, 5]
    assert {(m.scene, m.target) for m in fake.sent} == {("c2c", "U1")}

    sixth = api.post("v2/users/U1/messages", json=reply("第 6 条", 6))
    assert (sixth.status_code, sixth.json()["code"]) == (400, 22009)
    repeated = api.post("v2/groups/G1/messages", json=reply("重复", 1, msg_id="ROBOT1.0_n"))
    assert repeated.status_code == 200
    again = api.post("v2/groups/G1/messages", json=reply("重复", 1, msg_id="ROBOT1.0_n"))
    assert (again.status_code, again.json()["code"]) == (400, 40054005)


@pytest.mark.parametrize(
    "content", ["详见 https://example.com", "官网 stardust.cn", "文件 stardust.md"]
)
def test_links_are_refused(api: httpx.Client, content: str) -> None:
    response = api.post("v2/groups/G1/messages", json=reply(content, 1))
    assert (response.status_code, response.json()["code"]) == (400, 40054010)


def test_masked_links_pass(api: httpx.Client) -> None:
    response = api.post("v2/groups/G1/messages", json=reply("官网 stardust[.]cn，版本 1.75", 1))
    assert response.status_code == 200
