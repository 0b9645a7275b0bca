"""MaxKB as a knowledge backend: retrieval through one of three MaxKB APIs.

Modes (``QQRAG_MAXKB_MODE``):

- ``app_hit_test_v1``: MaxKB v1's application hit test with an application API key. v1 takes
  GET with query parameters up to v1.10.8-lts and PUT with a JSON body from v1.10.9-lts;
  ``v1_method="auto"`` tries PUT, falls back to GET when PUT is not allowed, and remembers.
- ``knowledge_hit_test_v2``: MaxKB v2's knowledge hit test with a user token (v2 refuses
  application keys there); several knowledge bases are searched concurrently and merged.
- ``app_chat_v2``: MaxKB v2's application chat with an application key. The answer carries no
  citations, so the paragraphs come from the chat record, which lists them only when the
  application's "显示知识来源" (show_source) is on. A retrieval-only workflow works too.

Every answer is a ``{"code", "message", "data"}`` envelope whose ``code`` matters as much as
the HTTP status: validation errors are HTTP 200 with code 500. Rows come back unsorted, so
passages are sorted by ``comprehensive_score`` here (blend scores can exceed 1 and are kept
raw). Error messages are Chinese and say what an operator should do.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Literal, get_args
from urllib.parse import urlsplit

import httpx
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from tools.base import KnowledgeMisconfigured, KnowledgeUnavailable, Passage
from tools.health import Health

logger = logging.getLogger(__name__)

Mode = Literal["app_hit_test_v1", "knowledge_hit_test_v2", "app_chat_v2"]
V1Method = Literal["auto", "get", "put"]
SearchMode = Literal["embedding", "keywords", "blend"]

APPLICATION_KEY_PREFIXES = ("application-", "agent-")
"""Application API keys start with one of these; newer v2 releases issue ``agent-`` keys."""
MAX_TOP_NUMBER = 10_000
MAX_ACCESS_NUM = 10_000
ACCESS_LIMIT_STATUS = 461

_RETRY_STATUSES = frozenset({502, 503, 504})
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_AUTH_CODES = frozenset({1002, 1003})
_TOKEN_SETTING = "QQRAG_MAXKB_TOKEN"
_KEY_SETTING = "QQRAG_MAXKB_API_KEY"
_SHOW_SOURCE_MESSAGE = (
    "MaxKB 的对话记录里没有知识来源（paragraph_list）：请在 MaxKB 管理后台打开该应用 → 概览 → "
    "访问限制，在应用的访问限制里打开“显示知识来源”，保存后再试。"
)
_ACCESS_LIMIT_FIX = (
    "在 MaxKB 管理后台打开该应用 → 概览 → 访问限制，调高每日访问次数 access_num（默认 100，"
    f"最多 {MAX_ACCESS_NUM}）；或等到第二天 MaxKB 的计数清零"
)
_HEALTH_QUERY = "连接检查"
# A few paths an operator may paste with the base URL; the API paths are appended to it.
_URL_SUFFIXES = ("/admin", "/chat", "/api", "/ui")


class MaxKBError(KnowledgeUnavailable):
    """A MaxKB call failed; ``str()`` is a Chinese message telling an operator what to do."""

    def __init__(self, message: str, *, status: int | None = None, code: int | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code

    def __str__(self) -> str:
        return self.message


class MaxKBAuthError(MaxKBError):
    """MaxKB rejected the token or key: it is wrong, expired, or of the wrong kind."""


class MaxKBConfigError(MaxKBError, KnowledgeMisconfigured):
    """The configuration cannot work; found before any call or from what MaxKB answered."""


@dataclass
class AccessLimitNote:
    """The daily access limit (HTTP 461) as the last real search met it.

    Health checks read it instead of spending an access of their own (the chat mode's check
    reads the application profile, which MaxKB does not count). Kept in ``path`` when given,
    so that every worker process and ``qqrag doctor`` see the same note; MaxKB counts visits
    per day, so a note from an earlier day is void.
    """

    path: Path | None = None
    today: Callable[[], date] = date.today
    _memory: dict[str, str] | None = field(default=None, init=False)

    def write(self, detail: str) -> None:
        note = {"day": self.today().isoformat(), "detail": detail}
        self._memory = note
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(note, ensure_ascii=False), encoding="utf-8")

    def clear(self) -> None:
        self._memory = None
        if self.path is not None:
            self.path.unlink(missing_ok=True)

    def read(self) -> str:
        """The refusal's detail when it was met today, else empty."""
        note: Any = self._memory
        if self.path is not None:
            try:
                note = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                note = None
        if not isinstance(note, dict) or note.get("day") != self.today().isoformat():
            return ""
        return str(note.get("detail") or "")


def _access_limit_message(detail: str) -> str:
    return f"MaxKB 应用今天的访问次数已用完（{detail}）"


def is_application_key(credential: str) -> bool:
    """Whether ``credential`` is an application API key rather than a user token."""
    return _clean_credential(credential).startswith(APPLICATION_KEY_PREFIXES)


def _clean_credential(credential: str) -> str:
    # Operators often paste the whole header value; the prefix is added back where needed.
    credential = credential.strip()
    return credential[len("Bearer ") :].strip() if credential.startswith("Bearer ") else credential


@dataclass(frozen=True)
class MaxKBConfig:
    """Where and how to reach MaxKB; mirrors the ``maxkb_*`` settings."""

    url: str
    mode: Mode = "knowledge_hit_test_v2"
    api_key: str = ""
    token: str = ""
    application_id: str = ""
    knowledge_ids: tuple[str, ...] = ()
    workspace: str = "default"
    admin_path: str = "/admin"
    v1_method: V1Method = "auto"
    search_mode: SearchMode = "blend"
    similarity: float = 0.0
    timeout: float = 10.0
    retries: int = 2

    @property
    def base_url(self) -> str:
        return self.url.strip().rstrip("/")

    @property
    def admin_prefix(self) -> str:
        return "/" + self.admin_path.strip().strip("/") if self.admin_path.strip("/ ") else ""

    def validate(self) -> None:
        """Raise :class:`MaxKBConfigError` listing every problem found for this mode."""
        problems = [*self._url_problems(), *self._mode_problems()]
        if not 0.0 <= self.similarity <= 2.0:
            problems.append(
                "QQRAG_MAXKB_SIMILARITY 要在 0 到 2 之间（blend 模式的分数可以超过 1）。"
            )
        if self.timeout <= 0:
            problems.append("QQRAG_MAXKB_TIMEOUT 要大于 0 秒。")
        if self.retries < 0:
            problems.append("QQRAG_MAXKB_RETRIES 不能是负数。")
        if self.search_mode not in get_args(SearchMode):
            problems.append("QQRAG_MAXKB_SEARCH_MODE 只能是 embedding、keywords 或 blend。")
        if self.v1_method not in get_args(V1Method):
            problems.append("QQRAG_MAXKB_V1_METHOD 只能是 auto、get 或 put。")
        if problems:
            listed = "\n".join(f"- {problem}" for problem in problems)
            raise MaxKBConfigError(f"MaxKB 配置有误（QQRAG_MAXKB_MODE={self.mode}）：\n{listed}")

    def _url_problems(self) -> list[str]:
        url = self.base_url
        if not url:
            return ["没有配置 MaxKB 地址：请设置 QQRAG_MAXKB_URL，例如 http://maxkb:8080。"]
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            return [f"QQRAG_MAXKB_URL={url} 不是 http(s) 地址：请写成 http://主机:端口 的形式。"]
        if parts.path.endswith(_URL_SUFFIXES):
            return [
                f"QQRAG_MAXKB_URL={url} 多写了路径：只写到端口为止（例如 http://maxkb:8080），"
                "管理端前缀由 QQRAG_MAXKB_ADMIN_PATH 设置。"
            ]
        return []

    def _mode_problems(self) -> list[str]:
        if self.mode == "app_hit_test_v1":
            problems = self._key_problems("v1 的应用命中测试")
            if not self.application_id.strip():
                problems.append(
                    "没有配置 QQRAG_MAXKB_APPLICATION_ID：请填应用的 id（MaxKB 里打开该应用，"
                    "地址栏 /application/ 后面那一段）。"
                )
            return problems
        if self.mode == "knowledge_hit_test_v2":
            return self._token_problems() + self._knowledge_id_problems()
        if self.mode == "app_chat_v2":
            return self._key_problems("v2 的应用对话接口")
        return [
            f"不认识的 QQRAG_MAXKB_MODE={self.mode}：可选 app_hit_test_v1、"
            "knowledge_hit_test_v2、app_chat_v2。"
        ]

    def _key_problems(self, api: str) -> list[str]:
        key = _clean_credential(self.api_key)
        if not key:
            hint = "（QQRAG_MAXKB_TOKEN 里的用户令牌在这里不能用）" if self.token.strip() else ""
            return [
                f"没有配置 {_KEY_SETTING}：{api}需要应用 API Key{hint}。请在 MaxKB 管理后台"
                "打开该应用 → 概览 → API Key，创建一个 Key（以 application- 开头）。"
            ]
        if not is_application_key(key):
            return [
                f"{_KEY_SETTING} 看起来是用户令牌，不是应用 API Key（应以 application- 开头）："
                f"{api}只接受应用 API Key。请在该应用 → 概览 → API Key 里创建一个。"
            ]
        return []

    def _token_problems(self) -> list[str]:
        token = _clean_credential(self.token)
        if not token:
            hint = (
                f"；{_KEY_SETTING} 里的应用 API Key 在这里不能用，想用应用 API Key 请改成 "
                "QQRAG_MAXKB_MODE=app_chat_v2"
                if self.api_key.strip()
                else ""
            )
            return [
                f"没有配置 {_TOKEN_SETTING}：v2 的知识库命中测试需要 MaxKB 用户令牌{hint}。"
                "登录 MaxKB 管理后台后，从浏览器开发者工具里任一 /admin/api/ 请求的 "
                "Authorization 头复制 Bearer 后面的那一串。"
            ]
        if is_application_key(token):
            return [
                f"{_TOKEN_SETTING} 里是应用 API Key，但 v2 的知识库命中测试只接受用户令牌"
                "（用应用 Key 会得到 HTTP 403）。请换成登录管理后台得到的用户令牌，"
                "或改用 QQRAG_MAXKB_MODE=app_chat_v2 配合 QQRAG_MAXKB_API_KEY。"
            ]
        return []

    def _knowledge_id_problems(self) -> list[str]:
        if not self.knowledge_ids:
            return [
                "没有配置 QQRAG_MAXKB_KNOWLEDGE_IDS：请填要搜索的知识库 id，多个用逗号分隔"
                "（MaxKB 里打开知识库，地址栏 /knowledge/ 后面那一段）。"
            ]
        malformed = [kid for kid in self.knowledge_ids if not _is_uuid(kid)]
        if malformed:
            return [
                f"QQRAG_MAXKB_KNOWLEDGE_IDS 里的 {', '.join(malformed)} 不是知识库 id"
                "（应是 UUID，例如 01a20f1e-2086-71f1-bbc1-1fc95ec9e38e）。"
            ]
        return []


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


class _TransientStatus(Exception):
    """A 502/503/504 answer, raised inside a retried attempt so that tenacity retries it."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.response = response


def _is_transient(exc: BaseException) -> bool:
    return isinstance(
        exc,
        _TransientStatus | httpx.TimeoutException | httpx.NetworkError | httpx.RemoteProtocolError,
    )


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    logger.info("MaxKB 请求失败（%s），第 %d 次重试", _describe(exc), state.attempt_number)


def _describe(exc: BaseException | None) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return "等待响应超时"
    if isinstance(exc, httpx.ConnectError):
        return f"连接失败：{exc}" if str(exc) else "连接失败"
    text = str(exc) if exc is not None else ""
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


def _json_body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _envelope(response: httpx.Response) -> tuple[int | None, str, Any]:
    """``(code, message, data)`` of a MaxKB answer; code None when it is no envelope."""
    body = _json_body(response)
    if not isinstance(body, dict):
        return None, response.text.strip()[:200], None
    code = body.get("code")
    message = body.get("message") or body.get("detail") or ""
    return code if isinstance(code, int) else None, str(message), body.get("data")


def _method_not_allowed(response: httpx.Response, method: str) -> bool:
    """Django REST framework's refusal, as MaxKB wraps it (HTTP 200, code 500) or plain 405."""
    if response.status_code == 405:
        return True
    code, message, _ = _envelope(response)
    refused = "not allowed" in message.lower() or "不被允许" in message or "不允许" in message
    return response.status_code == 200 and code == 500 and method in message and refused


def _unknown_chat(response: httpx.Response) -> bool:
    """chat_message on a chat id MaxKB no longer knows (expired from its cache)."""
    code, message, data = _envelope(response)
    lowered = message.lower()
    return (
        response.status_code == 500
        and code == 500
        and data is None
        and ("conversation does not exist" in lowered or "会话不存在" in message)
    )


def _rows(data: Any) -> list[Any]:
    if not isinstance(data, list):
        raise MaxKBError(
            "MaxKB 返回的检索结果不是列表：请确认 QQRAG_MAXKB_MODE 与 MaxKB 的版本相符。"
        )
    return data


def _score(row: Mapping[str, Any]) -> float:
    for key in ("comprehensive_score", "similarity"):
        value = row.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return 0.0


def _passage(row: Mapping[str, Any]) -> Passage:
    document = str(row.get("document_name") or "").strip()
    knowledge = str(
        row.get("knowledge_name")
        or row.get("dataset_name")
        or row.get("knowledge_id")
        or row.get("dataset_id")
        or ""
    ).strip()
    title = str(row.get("title") or "").strip() or document or knowledge
    return Passage(
        id=str(row["id"]),
        title=title,
        source=f"MaxKB · {document or knowledge or '未知文档'}",
        text=str(row.get("content") or ""),
        score=_score(row),
        kb=f"maxkb:{knowledge}" if knowledge else "maxkb",
    )


def rows_to_passages(rows: Iterable[Any], k: int) -> list[Passage]:
    """The ``k`` best distinct paragraphs of MaxKB rows (hit test or chat record), best first.

    MaxKB does not sort; a paragraph found in several places keeps its best score. Rows
    without an id are skipped; every other key may be missing.
    """
    usable = [row for row in rows if isinstance(row, Mapping) and row.get("id")]
    best: dict[str, Mapping[str, Any]] = {}
    for row in sorted(usable, key=_score, reverse=True):
        best.setdefault(str(row["id"]), row)
    return [_passage(row) for row in best.values()][: max(k, 0)]


class MaxKBKnowledge:
    """A :class:`~tools.base.KnowledgeBackend` searching MaxKB (see the module docstring)."""

    name = "maxkb"

    def __init__(
        self,
        config: MaxKBConfig,
        *,
        client: httpx.AsyncClient | None = None,
        access_limit: AccessLimitNote | None = None,
    ) -> None:
        config.validate()
        self.config = config
        self.access_limit = access_limit or AccessLimitNote()
        self._timeout = httpx.Timeout(config.timeout)
        self._client = client or httpx.AsyncClient(timeout=self._timeout)
        self._owns_client = client is None
        self._v1_method: Literal["get", "put"] | None = (
            None if config.v1_method == "auto" else config.v1_method
        )
        self._chat_id: str | None = None
        self._chat_lock = asyncio.Lock()
        self.on_outage: Callable[[str], None] | None = None
        """Told "maxkb" when a search fails (metrics)."""

    @property
    def v1_method(self) -> Literal["get", "put"] | None:
        """The v1 hit-test method in use; None until ``auto`` has found out."""
        return self._v1_method

    async def search(self, query: str, k: int) -> list[Passage]:
        if k <= 0 or not query.strip():
            return []
        try:
            return await self._search(query, k)
        except MaxKBError:
            if self.on_outage is not None:
                self.on_outage(self.name)
            raise

    async def _search(self, query: str, k: int) -> list[Passage]:
        top_number = min(k, MAX_TOP_NUMBER)
        if self.config.mode == "app_hit_test_v1":
            rows = await self._hit_test_v1(query, top_number)
        elif self.config.mode == "knowledge_hit_test_v2":
            found = await asyncio.gather(
                *(self._hit_test_v2(kid, query, top_number) for kid in self.config.knowledge_ids)
            )
            rows = [row for part in found for row in part]
        else:
            rows = await self._chat_citations(query)
        return rows_to_passages(rows, k)

    async def health(self) -> Health:
        """Up when MaxKB answers an authenticated call, else what to fix, in Chinese."""
        try:
            await self.check()
        except MaxKBConfigError as exc:
            return Health.down(str(exc), misconfigured=True)
        except MaxKBError as exc:
            return Health.down(str(exc))
        if detail := self.access_limit.read():
            return Health.down(_access_limit_message(detail), _ACCESS_LIMIT_FIX)
        return Health.up(f"{self.config.url}（{self.config.mode}）可用，密钥有效")

    async def check(self) -> None:
        """One cheap authenticated call per configured target; raise what :meth:`health` reports.

        The hit-test modes run a one-row hit test (the exact call searches make); the chat
        mode reads the application profile, which spends no daily access and tells whether
        the application shows its sources.
        """
        if self.config.mode == "app_hit_test_v1":
            await self._hit_test_v1(_HEALTH_QUERY, 1)
        elif self.config.mode == "knowledge_hit_test_v2":
            await asyncio.gather(
                *(self._hit_test_v2(kid, _HEALTH_QUERY, 1) for kid in self.config.knowledge_ids)
            )
        else:
            profile = self._data(await self._send("GET", "/chat/api/application/profile"))
            if not isinstance(profile, Mapping):
                raise MaxKBError(
                    "MaxKB 返回的应用信息无法识别：请确认 QQRAG_MAXKB_URL 指向 MaxKB v2。"
                )
            if profile.get("is_publish") is False:
                raise MaxKBError("MaxKB 应用还没有发布：请在 MaxKB 管理后台发布该应用后再试。")
            if not profile.get("show_source"):
                raise MaxKBConfigError(_SHOW_SOURCE_MESSAGE)

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    # ------------------------------------------------------------------ the three ways in

    async def _hit_test_v1(self, query: str, top_number: int) -> list[Any]:
        path = f"/api/application/{self.config.application_id.strip()}/hit_test"
        fields = self._hit_test_fields(query, top_number)
        method = self._v1_method or "put"
        response = await self._v1_request(method, path, fields)
        if self._v1_method is None and _method_not_allowed(response, "PUT"):
            logger.info("MaxKB v1 的命中测试不接受 PUT（v1.10.9-lts 之前的版本），改用 GET")
            method = "get"
            response = await self._v1_request(method, path, fields)
        if _method_not_allowed(response, method.upper()):
            raise MaxKBConfigError(
                f"MaxKB 的 v1 命中测试不接受 {method.upper()}：v1.10.8-lts 及以前只支持 GET，"
                "v1.10.9-lts 起改用 PUT。请把 QQRAG_MAXKB_V1_METHOD 设为 auto，或与版本相符的值。",
                status=response.status_code,
            )
        rows = _rows(self._data(response))
        self._v1_method = method
        self.access_limit.clear()
        return rows

    async def _v1_request(
        self, method: Literal["get", "put"], path: str, fields: dict[str, Any]
    ) -> httpx.Response:
        if method == "put":
            return await self._send("PUT", path, json=fields)
        return await self._send("GET", path, params={key: str(val) for key, val in fields.items()})

    async def _hit_test_v2(self, knowledge_id: str, query: str, top_number: int) -> list[Any]:
        path = (
            f"{self.config.admin_prefix}/api/workspace/{self.config.workspace}"
            f"/knowledge/{knowledge_id}/hit_test"
        )
        response = await self._send("PUT", path, json=self._hit_test_fields(query, top_number))
        try:
            return _rows(self._data(response))
        except MaxKBAuthError:
            raise
        except MaxKBError as exc:
            # Several knowledge bases are searched at once: say which one failed.
            raise type(exc)(
                f"知识库 {knowledge_id}：{exc.message}", status=exc.status, code=exc.code
            ) from exc

    async def _chat_citations(self, query: str) -> list[Any]:
        chat_id = await self._open_chat()
        response = await self._post_message(chat_id, query)
        if _unknown_chat(response):
            # MaxKB drops idle chats from its cache; the message was refused, so resend once.
            self._forget_chat(chat_id)
            chat_id = await self._open_chat()
            response = await self._post_message(chat_id, query)
        record_id = self._record_id(response)
        record = self._data(
            await self._send(
                "GET", f"/chat/api/historical_conversation/{chat_id}/record/{record_id}"
            )
        )
        if not isinstance(record, Mapping):
            raise MaxKBError("MaxKB 返回的对话记录无法识别：请确认 QQRAG_MAXKB_URL 指向 MaxKB v2。")
        if "paragraph_list" not in record:
            raise MaxKBConfigError(_SHOW_SOURCE_MESSAGE)
        return _rows(record["paragraph_list"])

    async def _open_chat(self) -> str:
        async with self._chat_lock:
            if self._chat_id is None:
                chat_id = self._data(await self._send("GET", "/chat/api/open"))
                if not isinstance(chat_id, str) or not chat_id:
                    raise MaxKBError(
                        "MaxKB 没有返回对话 id：请确认 QQRAG_MAXKB_URL 指向 MaxKB v2。"
                    )
                self._chat_id = chat_id
            return self._chat_id

    def _forget_chat(self, chat_id: str) -> None:
        if self._chat_id == chat_id:
            self._chat_id = None

    async def _post_message(self, chat_id: str, query: str) -> httpx.Response:
        body = {"message": query, "stream": False, "re_chat": False}
        # Not idempotent: a retried message could be answered and counted twice.
        return await self._send(
            "POST", f"/chat/api/chat_message/{chat_id}", json=body, idempotent=False
        )

    def _record_id(self, response: httpx.Response) -> str:
        code, _, data = _envelope(response)
        if response.status_code == 500 and code == 500 and isinstance(data, Mapping):
            # The model step failed after retrieval; MaxKB saved the record with its sources.
            logger.warning(
                "MaxKB 应用的模型调用失败，仍使用它检索到的段落：%s", data.get("content")
            )
        else:
            data = self._data(response)
        record_id = data.get("id") if isinstance(data, Mapping) else None
        if not isinstance(record_id, str) or not record_id:
            raise MaxKBError(
                "MaxKB 的回答里没有对话记录 id：请确认 QQRAG_MAXKB_URL 指向 MaxKB v2。"
            )
        # A message MaxKB answered is an access it counted: the day's limit is not reached.
        self.access_limit.clear()
        return record_id

    # ------------------------------------------------------------------ transport and envelope

    def _hit_test_fields(self, query: str, top_number: int) -> dict[str, Any]:
        return {
            "query_text": query,
            "top_number": top_number,
            "similarity": self.config.similarity,
            "search_mode": self.config.search_mode,
        }

    def _headers(self) -> dict[str, str]:
        if self.config.mode == "knowledge_hit_test_v2":
            return {"Authorization": f"Bearer {_clean_credential(self.config.token)}"}
        key = _clean_credential(self.config.api_key)
        # v1 hands the raw header to its key handler, which wants it to start with
        # "application-"; v2 requires the Bearer prefix.
        return {"Authorization": key if self.config.mode == "app_hit_test_v1" else f"Bearer {key}"}

    async def _send(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        idempotent: bool = True,
    ) -> httpx.Response:
        """One call, retried on connection errors, timeouts and 502/503/504 when idempotent."""
        url = self.config.base_url + path
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.config.retries + 1 if idempotent else 1),
            wait=wait_exponential(multiplier=0.2, max=2.0) + wait_random(0, 0.2),
            retry=retry_if_exception(_is_transient),
            before_sleep=_log_retry,
            reraise=True,
        )
        try:
            return await retrying(self._attempt, method, url, json, params)
        except _TransientStatus as exc:
            return exc.response
        except httpx.HTTPError as exc:
            raise MaxKBError(
                f"无法连接 MaxKB（{self.config.base_url}）：{_describe(exc)}。请确认 MaxKB 正在运行、"
                "QQRAG_MAXKB_URL 写对了、本机能访问它。"
            ) from exc

    async def _attempt(
        self, method: str, url: str, json: Any, params: Mapping[str, str] | None
    ) -> httpx.Response:
        response = await self._client.request(
            method, url, json=json, params=params, headers=self._headers(), timeout=self._timeout
        )
        if response.status_code in _RETRY_STATUSES:
            raise _TransientStatus(response)
        return response

    def _data(self, response: httpx.Response) -> Any:
        """The envelope's ``data``, or the matching :class:`MaxKBError`."""
        status = response.status_code
        code, message, data = _envelope(response)
        detail = f"HTTP {status}" + (f"，code {code}" if code is not None else "")
        detail += f"：{message}" if message else ""
        if status == ACCESS_LIMIT_STATUS:
            self.access_limit.write(detail)
            raise MaxKBError(
                f"{_access_limit_message(detail)}。请{_ACCESS_LIMIT_FIX}。",
                status=status,
                code=code,
            )
        if status in _REDIRECT_STATUSES:
            raise MaxKBConfigError(
                self._redirect_message(detail, response.headers.get("location", "")),
                status=status,
                code=code,
            )
        if status == 401 or code in _AUTH_CODES:
            raise MaxKBAuthError(self._auth_message(detail), status=status, code=code)
        if status == 403:
            raise MaxKBAuthError(self._forbidden_message(detail), status=status, code=code)
        if status == 404:
            # A wrong URL, prefix or mode: it will not heal, so no fallback may hide it.
            raise MaxKBConfigError(
                f"MaxKB 上没有这个接口（{detail}）：请检查 QQRAG_MAXKB_URL、"
                "QQRAG_MAXKB_ADMIN_PATH，以及 QQRAG_MAXKB_MODE 是否与 MaxKB 的版本相符。",
                status=status,
                code=code,
            )
        if status >= 400:
            raise MaxKBError(f"MaxKB 出错了（{detail}）。", status=status, code=code)
        if code is None:
            raise MaxKBError(
                f"MaxKB 的回答不是它的 JSON 格式（{detail}）：请确认 QQRAG_MAXKB_URL 指向 "
                "MaxKB 本身，而不是它前面的网页或代理。",
                status=status,
            )
        if code != 200:
            raise MaxKBError(f"MaxKB 拒绝了请求（{detail}）。", status=status, code=code)
        return data

    def _redirect_message(self, detail: str, location: str) -> str:
        # MaxKB redirects every path outside its prefixes to its admin UI, rather than a 404.
        where = f"重定向到了 {location}" if location else "重定向了请求"
        if self.config.mode == "knowledge_hit_test_v2":
            current = self.config.admin_prefix or "（空）"
            return (
                f"MaxKB 把命中测试{where}（{detail}）：它的管理端接口不在 {current}/api/ 下。"
                "请把 QQRAG_MAXKB_ADMIN_PATH 改成 MaxKB 的 ADMIN_PATH（默认 /admin，"
                f"当前是 {current}）。"
            )
        return (
            f"MaxKB {where}（{detail}）：这不是它的接口地址。请确认 QQRAG_MAXKB_URL 只写到端口"
            "（例如 http://maxkb:8080），并与 QQRAG_MAXKB_MODE 所选的 MaxKB 版本相符。"
        )

    def _auth_message(self, detail: str) -> str:
        if self.config.mode == "knowledge_hit_test_v2":
            return (
                f"MaxKB 不接受这个用户令牌（{detail}），它可能已过期（闲置 8 小时会失效）或填错了。"
                "请重新登录 MaxKB 管理后台，从浏览器开发者工具里任一 /admin/api/ 请求的 "
                f"Authorization 头复制 Bearer 后面的用户令牌，填入 {_TOKEN_SETTING}。"
            )
        return (
            f"MaxKB 不接受这个应用 API Key（{detail}），它可能已删除、停用或填错了。"
            "请在 MaxKB 管理后台打开该应用 → 概览 → API Key，创建新的 Key（以 application- 开头），"
            f"填入 {_KEY_SETTING}。"
        )

    def _forbidden_message(self, detail: str) -> str:
        if self.config.mode == "knowledge_hit_test_v2":
            return (
                f"MaxKB 拒绝了知识库命中测试（{detail}）：v2 的命中测试只接受用户令牌，不接受应用 "
                "API Key，也可能是这个用户没有该知识库的权限。请把登录管理后台得到的用户令牌填入 "
                f"{_TOKEN_SETTING}，或改用 QQRAG_MAXKB_MODE=app_chat_v2 配合应用 API Key。"
            )
        if self.config.mode == "app_hit_test_v1":
            return (
                f"MaxKB 拒绝了应用命中测试（{detail}）：这个 API Key 不属于应用 "
                f"{self.config.application_id}。请确认 QQRAG_MAXKB_APPLICATION_ID 和 "
                f"{_KEY_SETTING} 来自同一个应用。"
            )
        return f"MaxKB 拒绝了访问（{detail}）：请确认 {_KEY_SETTING} 是该应用有效的 API Key。"
