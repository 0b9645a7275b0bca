"""End to end: `python -m bot` and `qqrag serve` as child processes, the fake Ollama behind the
service, a NapCat-like client on the reverse WebSocket and signed webhooks from "QQ"."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import httpx
import pytest
import websockets
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from websockets.exceptions import InvalidStatus

from agent.audit import AuditLog
from evals.fakes import qq as fake_qq
from evals.fakes.ollama import FakeOllama
from evals.harness import ServiceProcess
from tests.bot.conftest import GROUP_ID, SELF_ID, USER_ID, BotProcess, group_event, lifecycle_event
from tests.conftest import FIXTURES

ONEBOT_TOKEN = "napcat-secret"
WARRANTY = "星尘打印机整机保修两年"


@pytest.fixture(scope="module")
def fake_api() -> Iterator[fake_qq.FakeQQ]:
    with fake_qq.FakeQQ() as fake:
        yield fake


@pytest.fixture(scope="module")
def bot(tmp_path_factory: pytest.TempPathFactory, fake_api: fake_qq.FakeQQ) -> Iterator[BotProcess]:
    """The real service with a small knowledge base, and the bot in front of it."""
    folder = tmp_path_factory.mktemp("e2e")
    with FakeOllama() as ollama:
        service_env = {
            "QQRAG_DATA_DIR": str(folder / "data"),
            "QQRAG_OLLAMA_URL": ollama.url,
            "QQRAG_DEFAULT_DOCS": str(FIXTURES / "kb"),
        }
        qq_bot = {
            "id": fake_qq.APP_ID,
            "token": "unused-since-1.7",
            "secret": fake_qq.SECRET,
            "intent": {"c2c_group_at_messages": True},
            "use_websocket": False,
        }
        with ServiceProcess(service_env, cwd=folder) as service:
            bot_env = {
                "QQRAG_BOT_SERVICE_URL": service.url,
                "QQRAG_BOT_ADAPTERS": "onebot,qq",
                "ONEBOT_ACCESS_TOKEN": ONEBOT_TOKEN,
                "QQ_BOTS": json.dumps([qq_bot]),
                "QQ_API_BASE": fake_api.url,
                "QQ_AUTH_BASE": fake_api.auth_url,
            }
            process = BotProcess(bot_env, cwd=folder).start()
            try:
                yield process
            finally:
                process.stop()


async def test_onebot_group_question_over_reverse_websocket(bot: BotProcess) -> None:
    url = f"ws://127.0.0.1:{bot.port}/onebot/v11/ws"
    headers = {"X-Self-ID": str(SELF_ID), "Authorization": f"Bearer {ONEBOT_TOKEN}"}
    async with websockets.connect(url, additional_headers=headers) as ws:
        await ws.send(json.dumps(lifecycle_event()))
        await ws.send(json.dumps(group_event("星尘打印机保修多久？")))
        frame = json.loads(await asyncio.wait_for(ws.recv(), timeout=30))
        await ws.send(
            json.dumps(
                {"status": "ok", "retcode": 0, "data": {"message_id": 99}, "echo": frame["echo"]}
            )
        )

    assert frame["action"] == "send_msg", bot.log()
    params = frame["params"]
    assert (params["message_type"], params["group_id"]) == ("group", GROUP_ID)
    reply, *texts = params["message"]
    assert reply == {"type": "reply", "data": {"id": "42"}}
    assert {segment["type"] for segment in texts} == {"text"}
    text = "".join(segment["data"]["text"] for segment in texts)
    answer, citations = text.split("\n\n")
    assert WARRANTY in answer
    assert citations.splitlines()[0] == "[1] stardust.md · 星尘打印机 › 保修"


async def _sent_text(ws: websockets.ClientConnection) -> str:
    """The text of the bot's next `send_msg`, acknowledged as NapCat would."""
    frame = json.loads(await asyncio.wait_for(ws.recv(), timeout=30))
    await ws.send(
        json.dumps(
            {"status": "ok", "retcode": 0, "data": {"message_id": 99}, "echo": frame["echo"]}
        )
    )
    assert frame["action"] == "send_msg"
    return "".join(s["data"]["text"] for s in frame["params"]["message"] if s["type"] == "text")


async def test_onebot_feedback_goes_through_chat_and_is_recorded(bot: BotProcess) -> None:
    url = f"ws://127.0.0.1:{bot.port}/onebot/v11/ws"
    headers = {"X-Self-ID": str(SELF_ID), "Authorization": f"Bearer {ONEBOT_TOKEN}"}
    user = USER_ID + 1
    async with websockets.connect(url, additional_headers=headers) as ws:
        await ws.send(json.dumps(lifecycle_event()))
        await ws.send(json.dumps(group_event("星尘打印机保修多久？", user_id=user)))
        answer = await _sent_text(ws)
        await ws.send(json.dumps(group_event("/反馈 差 太短", user_id=user, message_id=43)))
        thanks = await _sent_text(ws)

    assert WARRANTY in answer, bot.log()
    assert thanks == "收到，谢谢你的反馈！"
    # The service's data folder sits next to the bot's log (see the `bot` fixture).
    audit = AuditLog(bot.log_path.parent / "data" / "audit.sqlite")
    [row] = audit.feedback(f"default:onebot:group:{GROUP_ID}:{user}")
    audit.close()
    assert (row["rating"], row["comment"], row["question"], row["message_id"]) == (
        "bad",
        "太短",
        "星尘打印机保修多久？",
        "43",
    )


@pytest.mark.parametrize("authorization", ["Bearer wrong-token", None])
async def test_onebot_refuses_a_wrong_or_missing_access_token(
    bot: BotProcess, authorization: str | None
) -> None:
    headers = {"X-Self-ID": "10002"}
    if authorization:
        headers["Authorization"] = authorization
    with pytest.raises(InvalidStatus) as refused:
        async with websockets.connect(
            f"ws://127.0.0.1:{bot.port}/onebot/v11/ws", additional_headers=headers
        ):
            pass
    assert refused.value.response.status_code == 403


def test_qq_webhook_validation_is_signed_with_the_bot_secret(bot: BotProcess) -> None:
    headers, body = fake_qq.webhook_delivery(fake_qq.validation_request("plain-abc", "1725442341"))
    response = httpx.post(f"{bot.url}/qq/webhook", headers=headers, content=body, timeout=10)
    assert response.status_code == 200, bot.log()
    answer = response.json()
    assert answer["plain_token"] == "plain-abc"
    public_key: Ed25519PublicKey = fake_qq.signing_key(fake_qq.SECRET).public_key()
    public_key.verify(bytes.fromhex(answer["signature"]), b"1725442341plain-abc")


def test_qq_webhook_refuses_a_bad_signature(bot: BotProcess) -> None:
    payload = fake_qq.group_at_message(
        " 星尘打印机保修多久？", message_id="ROBOT1.0_forged", group_openid="G1", member_openid="U1"
    )
    headers, body = fake_qq.webhook_delivery(payload, secret="not-the-secret")
    response = httpx.post(f"{bot.url}/qq/webhook", headers=headers, content=body, timeout=10)
    assert response.status_code == 403


def test_qq_group_at_message_gets_a_passive_reply_without_links(
    bot: BotProcess, fake_api: fake_qq.FakeQQ
) -> None:
    fake_api.reset()
    payload = fake_qq.group_at_message(
        " 星尘打印机保修多久？", message_id="ROBOT1.0_msg1", group_openid="G1", member_openid="U1"
    )
    headers, body = fake_qq.webhook_delivery(payload)
    response = httpx.post(f"{bot.url}/qq/webhook", headers=headers, content=body, timeout=10)
    assert response.status_code == 200, bot.log()

    [sent] = fake_api.wait_for_messages(1)
    assert (sent.scene, sent.target) == ("group", "G1"), bot.log()
    assert sent.headers["authorization"] == f"QQBot {fake_api.access_token}"
    assert sent.headers["x-union-appid"] == fake_qq.APP_ID
    assert (sent.body["msg_type"], sent.body["msg_id"], sent.body["msg_seq"]) == (
        0,
        "ROBOT1.0_msg1",
        1,
    )
    content = sent.body["content"]
    assert WARRANTY in content
    assert "[1] stardust[.]md · 星尘打印机 › 保修" in content.splitlines()
    assert "stardust.md" not in content and "://" not in content


def test_qq_private_command_is_answered_by_the_service(
    bot: BotProcess, fake_api: fake_qq.FakeQQ
) -> None:
    fake_api.reset()
    payload = fake_qq.c2c_message("/帮助", message_id="ROBOT1.0_c2c1", user_openid="U2")
    headers, body = fake_qq.webhook_delivery(payload)
    assert httpx.post(f"{bot.url}/qq/webhook", headers=headers, content=body).status_code == 200

    [sent] = fake_api.wait_for_messages(1)
    assert (sent.scene, sent.target) == ("c2c", "U2"), bot.log()
    assert (sent.body["msg_id"], sent.body["msg_seq"]) == ("ROBOT1.0_c2c1", 1)
    assert "/原文 n" in sent.body["content"]
