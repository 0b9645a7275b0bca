"""A fake MaxKB server on 127.0.0.1 for tests, evals and trying the MaxKB backend by hand.

It answers the calls :mod:`tools.maxkb` makes the way MaxKB answers them on the wire (the
exchanges in ``tests/fixtures/maxkb`` were captured from a real MaxKB v2.1.0):

- v2 knowledge hit test: ``PUT {admin}/api/workspace/{workspace}/knowledge/{id}/hit_test``,
  user token only (an application key gets HTTP 403);
- v1 application hit test: ``/api/application/{id}/hit_test``, PUT with a JSON body, or, with
  ``v1_put_supported=False`` (up to v1.10.8-lts), GET with query parameters only. v1 reads the
  ``Authorization`` header raw (no ``Bearer``);
- v2 application chat: ``GET /chat/api/open``, ``POST /chat/api/chat_message/{chat_id}``
  (``stream: false`` only), ``GET /chat/api/historical_conversation/{chat_id}/record/{id}``
  (``paragraph_list``/``knowledge_list`` only while ``show_source`` is on) and
  ``GET /chat/api/application/profile``.

MaxKB's quirks are kept: errors are ``{"code","message","data":null}`` envelopes whose HTTP
status and code disagree (validation is HTTP 200 + code 500, an unknown application key
HTTP 401 + code 500, the daily access limit HTTP 461 + code 1002, an unknown chat HTTP 500);
a refused HTTP method is HTTP 200 + code 500 'Method "PUT" not allowed.' (MaxKB's exception
handler wraps Django REST framework's 405, in v1 as in v2); the search_mode check is the
unanchored regex ``^embedding|keywords|blend$``; the similarity threshold is strict (``>``);
rows come back in a deterministic shuffle, never sorted. As the live v2.1.0 of
``tests/fixtures/maxkb-live`` answers: validation messages are Chinese unless the request asks
for English (``language`` sets the server's own); a path with no route is a 404 envelope under
``{admin}/api/`` (a trailing slash on the hit test too), MaxKB's HTML 404 page elsewhere under
the admin prefix, and a 302 to ``{admin}/`` outside it (a wrong ``QQRAG_MAXKB_ADMIN_PATH``); an
expired user token is "Login expired", a user token on the chat profile "身份异常", a disabled
API key is refused like an unknown one.

Scores are character-bigram overlap between the query and title + content ("embedding"); a
keyword rank counts when every query word (a run of letters, digits or CJK characters) occurs
in the paragraph ("keywords" needs it); "blend" adds both, so it can exceed 1.

Run it by hand with ``python -m evals.fakes.maxkb --port 8080``.
"""

from __future__ import annotations

import enum
import hashlib
import json
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response

from evals.fakes._server import (
    NOT_JSON,
    ScriptedServer,
    catch_all,
    command_line,
    json_body,
    serve_forever,
)
from evals.fakes.ollama import count_tokens, overlap

FIXTURES_DIR = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "maxkb"
LIVE_FIXTURES_DIR = FIXTURES_DIR.with_name("maxkb-live")
FIXTURE_KNOWLEDGE_ID = "01a20f1e-2086-71f1-bbc1-1fc95ec9e38e"
DEFAULT_APPLICATION_ID = "01a20f1e-e423-7261-9b85-d4804ea713e6"
DEFAULT_USER_TOKEN = "fake-maxkb-user-token"
DEFAULT_API_KEY = "application-fa4efa4efa4efa4efa4efa4efa4efa4e"
DEFAULT_ACCESS_NUM = 100
SEARCH_MODES = ("embedding", "keywords", "blend")
SLOW_FAULT_S = 30.0

NOT_LOGGED_IN = "Not logged in, please log in first"
ILLEGAL_USER = "Authentication information is incorrect! illegal user"
LOGIN_EXPIRED = "Login expired"
IDENTITY_ERROR = "身份异常"
PAGE_NOT_FOUND = "页面不存在"
INVALID_KEY = "Secret key is invalid"
NO_PERMISSION = "No permission to access"
ACCESS_LIMIT = "The number of visits exceeds today's visits"
UNKNOWN_CHAT = "Conversation does not exist"
UNPUBLISHED = "The application has not been published. Please use it after publishing."
USER_TOKEN_ON_CHAT = "'Auth' object has no attribute 'application_id'"
LLM_EXCEPTION = "Exception:model 'qwen3:8b' not found"
DB_DOWN = 'connection to server at "127.0.0.1", port 5432 failed: Connection refused'
BAD_GATEWAY_HTML = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n"
)

_APPLICATION_KEY_PREFIXES = ("application-", "agent-")
# MaxKB validates search_mode with this regex, unanchored in the middle: "embedding_v2"
# passes and only fails later, when it is turned into a SearchMode.
_SEARCH_MODE_RE = re.compile(r"^embedding|keywords|blend$")
_WORD_RE = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaffA-Za-z0-9]+")
_SENTENCE_RE = re.compile(r"[^。！？!?]+[。！？!?]?")
_FIXED_TIME = "2026-11-24T19:52:42.453Z"
_STATUS_META = json.dumps(
    {"state_time": {"1": {"0": "2026-11-24 19:52:42.482949+00"}}}, separators=(", ", ": ")
)
_ID_NAMESPACE = uuid.UUID("5d1c7e0a-4b1e-4f0e-9a59-6d61786b6221")


class Fault(enum.Enum):
    """Failures that :meth:`FakeMaxKB.fail_next` scripts for the next requests, any route."""

    HTTP_500 = "http_500"  # 500 {"code":500,"message":"Internal Server Error","data":null}
    HTTP_502 = "http_502"  # 502 with the HTML page a reverse proxy (nginx) answers
    SLOW = "slow"  # 30 s before answering normally (stop() cuts it short)
    CODE_500_IN_200 = "code_500_in_200"  # 200 {"code":500,...}: an unhandled error inside MaxKB
    AUTH_401 = "auth_401"  # 401 {"code":1002,...}, as for an expired token


# --------------------------------------------------------------------------- the knowledge


@dataclass
class FakeKnowledge:
    """One knowledge base ("dataset" in v1) and its paragraphs, in hit-test row shape."""

    id: str
    name: str
    paragraphs: list[dict[str, Any]] = field(default_factory=list)

    def add(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Add paragraphs; ``content`` is required, every other key has a default."""
        for row in rows:
            self.paragraphs.append(self._paragraph(row, len(self.paragraphs) + 1))

    def _paragraph(self, row: Mapping[str, Any], position: int) -> dict[str, Any]:
        content = str(row["content"])
        document_name = str(row.get("document_name") or "fake-document.md")
        return {
            "id": str(row.get("id") or _stable_id(self.id, content)),
            "title": str(row.get("title") or ""),
            "content": content,
            "document_id": str(row.get("document_id") or _stable_id(self.id, document_name)),
            "document_name": document_name,
            "position": int(row.get("position") or position),
            "create_time": str(row.get("create_time") or _FIXED_TIME),
            "update_time": str(row.get("update_time") or _FIXED_TIME),
            "status": str(row.get("status") or "nn2"),
            "status_meta": str(row.get("status_meta") or _STATUS_META),
            "hit_num": int(row.get("hit_num") or 0),
            "is_active": bool(row.get("is_active", True)),
        }


def _stable_id(*parts: str) -> str:
    return str(uuid.uuid5(_ID_NAMESPACE, "\0".join(parts)))


def load_fixture_knowledge(directory: Path = FIXTURES_DIR) -> FakeKnowledge:
    """The captured knowledge base: six CMRC 2018 paragraphs with their MaxKB ids and times.

    The paragraphs and their order come from the batch-create request; ids, document ids and
    times from the captured hit-test rows (the one paragraph no hit test returned gets a
    stable made-up id).
    """
    created = _load_exchange(directory / "admin_knowledge_document_batch_create.json")
    document = created["request"]["body"][0]
    captured = _load_exchange(directory / "hit_test_top_number_10_similarity_0.json")
    rows = {row["title"]: row for row in captured["response"]["body"]["data"]}
    first = next(iter(rows.values()))
    knowledge = FakeKnowledge(id=first["knowledge_id"], name=first["knowledge_name"])
    knowledge.add(
        {
            **rows.get(paragraph["title"], {"document_id": first["document_id"]}),
            "title": paragraph["title"],
            "content": paragraph["content"],
            "document_name": document["name"],
        }
        for paragraph in document["paragraphs"]
    )
    return knowledge


def _load_exchange(path: Path) -> dict[str, Any]:
    exchange: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return exchange


def query_words(query: str) -> list[str]:
    """Runs of letters, digits or CJK characters: the fake's stand-in for jieba tokens."""
    return _WORD_RE.findall(query.lower())


def keyword_rank(query: str, text: str) -> float | None:
    """A ts_rank-like score in (0, 1) when every query word occurs in ``text``, else None."""
    lowered = text.lower()
    counts = [lowered.count(word) for word in query_words(query)]
    if not counts or not all(counts):
        return None
    hits = sum(counts)
    return hits / (hits + 5)


def score(query: str, paragraph: Mapping[str, Any], search_mode: str) -> float | None:
    """The paragraph's score for ``query`` under ``search_mode``; None when it cannot match."""
    text = f"{paragraph['title']}\n{paragraph['content']}"
    embedding = overlap(query, text)
    keywords = keyword_rank(query, text)
    if search_mode == "embedding":
        return embedding
    if search_mode == "keywords":
        return keywords
    return embedding + (keywords or 0.0)


class _Hit(NamedTuple):
    knowledge: FakeKnowledge
    paragraph: dict[str, Any]
    score: float


def search(
    knowledge: Iterable[FakeKnowledge],
    query: str,
    *,
    top_number: int,
    similarity: float,
    search_mode: str,
) -> list[_Hit]:
    """The ``top_number`` best paragraphs scoring above ``similarity``, NOT in score order.

    MaxKB returns its hits in no particular order; the fake shuffles them by a hash of the
    query and the paragraph id, so the order is stable but unrelated to the scores.
    """
    hits = []
    for base in knowledge:
        for paragraph in base.paragraphs:
            value = score(query, paragraph, search_mode) if paragraph["is_active"] else None
            if value is not None and value > similarity:
                hits.append(_Hit(base, paragraph, value))
    hits.sort(key=lambda hit: (-hit.score, hit.paragraph["id"]))
    return sorted(hits[:top_number], key=lambda hit: _shuffle_key(query, hit.paragraph["id"]))


def _shuffle_key(query: str, paragraph_id: str) -> str:
    return hashlib.sha256(f"{query}\0{paragraph_id}".encode()).hexdigest()


def _hit_test_row(hit: _Hit, *, v1: bool) -> dict[str, Any]:
    paragraph, base = hit.paragraph, hit.knowledge
    prefix = "dataset" if v1 else "knowledge"
    return {
        "document_name": paragraph["document_name"],
        f"{prefix}_name": base.name,
        "create_time": paragraph["create_time"],
        "update_time": paragraph["update_time"],
        "id": paragraph["id"],
        "content": paragraph["content"],
        "title": paragraph["title"],
        "status": paragraph["status"],
        "status_meta": paragraph["status_meta"],
        "hit_num": paragraph["hit_num"],
        "is_active": paragraph["is_active"],
        "position": paragraph["position"],
        "document_id": paragraph["document_id"],
        f"{prefix}_id": base.id,
        "similarity": hit.score,
        "comprehensive_score": hit.score,
    }


def _record_row(hit: _Hit) -> dict[str, Any]:
    """A chat-record citation: fewer keys than a hit-test row, status as a list, plus meta."""
    paragraph, base = hit.paragraph, hit.knowledge
    return {
        "id": paragraph["id"],
        "document_id": paragraph["document_id"],
        "knowledge_id": base.id,
        "content": paragraph["content"],
        "title": paragraph["title"],
        "status": [paragraph["status"]],
        "is_active": paragraph["is_active"],
        "comprehensive_score": hit.score,
        "similarity": hit.score,
        "knowledge_name": base.name,
        "document_name": paragraph["document_name"],
        "knowledge_type": 0,
        "meta": {"allow_download": True},
    }


# --------------------------------------------------------------------------- wire helpers


def _json(value: Any, status: int = 200) -> Response:
    body = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
    return Response(body, status, media_type="application/json")


def _envelope(code: int, message: str, data: Any = None, status: int = 200) -> Response:
    return _json({"code": code, "message": message, "data": data}, status)


def _success(data: Any) -> Response:
    return _envelope(200, "Success", data)


def _failure(message: str) -> Response:
    """What MaxKB answers for validation and application errors: HTTP 200, code 500."""
    return _envelope(500, message)


Language = Literal["zh", "en"]

# Django REST framework's messages as MaxKB answers them, in its two languages; MaxKB's own
# messages (the search_mode check, "Must be a valid UUID") stay English in both.
_MESSAGES: dict[Language, dict[str, str]] = {
    "en": {
        "null": "This field may not be null.",
        "blank": "This field may not be blank.",
        "required": "This field is required.",
        "integer": "A valid integer is required.",
        "number": "A valid number is required.",
        "min": "Ensure this value is greater than or equal to {}.",
        "max": "Ensure this value is less than or equal to {}.",
        "method": 'Method "{}" not allowed.',
    },
    "zh": {
        "null": "该字段不能为 null。",
        "blank": "该字段不能为空。",
        "required": "该字段是必填项。",
        "integer": "请填写合法的整数值。",
        "number": "请填写合法的数字。",
        "min": "请确保该值大于或者等于 {}。",
        "max": "请确保该值小于或者等于 {}。",
        "method": "方法 “{}” 不被允许。",
    },
}


def _not_allowed(method: str, language: Language) -> Response:
    return _failure(_MESSAGES[language]["method"].format(method))


def _hit_test_problem(fields: Mapping[str, Any], language: Language) -> str | None:
    """MaxKB's first validation message for hit-test fields (v2 serializer order), or None."""
    said = _MESSAGES[language]
    query_text = fields.get("query_text")
    if query_text is None:
        return f"query text:{said['null']}"
    if not str(query_text).strip():
        return f"query text:{said['blank']}"
    return (
        _range_problem("top number", fields.get("top_number"), int, 1, 10000, said)
        or _range_problem("similarity", fields.get("similarity"), float, 0, 2, said)
        or _search_mode_problem(fields.get("search_mode"), said)
    )


def _range_problem(
    label: str,
    value: Any,
    parse: Callable[[str], float],
    low: int,
    high: int,
    said: Mapping[str, str],
) -> str | None:
    """DRF's messages for a missing, unparsable or out-of-range number field."""
    if value is None:
        return f"{label}:{said['null']}"
    try:
        number = parse(str(value))
    except ValueError:
        return f"{label}:{said['integer' if parse is int else 'number']}"
    if number < low:
        return f"{label}:{said['min'].format(low)}"
    if number > high:
        return f"{label}:{said['max'].format(high)}"
    return None


def _search_mode_problem(search_mode: Any, said: Mapping[str, str]) -> str | None:
    if search_mode is None:
        return f"search mode:{said['null']}"
    if not _SEARCH_MODE_RE.search(str(search_mode)):
        return "search mode:The type only supports embedding|keywords|blend"
    return None


def _language(request: Request, default: Language) -> Language:
    """Accept-Language picks the language; without it, the server's own (a default install
    answers in Chinese)."""
    asked = request.headers.get("accept-language", "").lower()
    if asked.startswith("zh"):
        return "zh"
    return "en" if asked.startswith("en") else default


# --------------------------------------------------------------------------- the server


class _Caller(NamedTuple):
    kind: Literal["user", "application"]
    credential: str


@dataclass
class _Record:
    chat_id: str
    fields: dict[str, Any]


class FakeMaxKB(ScriptedServer[Fault]):
    """A fake MaxKB server in a background thread; see the module docstring.

    Use it as a context manager, or call :meth:`start` and :meth:`stop`. ``requests`` records
    every request as ``{"method", "path", "query", "authorization", "json", "at"}`` (``at``:
    ``time.monotonic()`` on arrival). The knowledge defaults to the captured fixture
    knowledge base when ``tests/fixtures/maxkb`` is there; every application answer searches
    all knowledge bases.
    """

    label = "fake MaxKB"

    def __init__(
        self,
        *,
        knowledge: Iterable[FakeKnowledge] | None = None,
        user_token: str = DEFAULT_USER_TOKEN,
        api_key: str = DEFAULT_API_KEY,
        application_id: str = DEFAULT_APPLICATION_ID,
        admin_path: str = "/admin",
        workspace: str = "default",
        v1_put_supported: bool = True,
        show_source: bool = True,
        published: bool = True,
        access_num: int = DEFAULT_ACCESS_NUM,
        language: Language = "zh",
        port: int = 0,
    ) -> None:
        super().__init__(port)
        if knowledge is None:
            found = (FIXTURES_DIR / "admin_knowledge_document_batch_create.json").is_file()
            knowledge = [load_fixture_knowledge()] if found else []
        self.knowledge = {base.id: base for base in knowledge}
        self.user_token = user_token
        self.api_key = api_key
        self.application_id = application_id
        self.admin_path = admin_path
        self.workspace = workspace
        self.v1_put_supported = v1_put_supported
        self.show_source = show_source
        self.published = published
        self.access_num = access_num
        self.language: Language = language
        """Of validation messages when a request names no Accept-Language."""
        self.key_active = True
        """False: the application API key is disabled in MaxKB (refused like an unknown one)."""
        self.expired_tokens: set[str] = set()
        """User tokens whose session is over (logged out, or idle past MaxKB's timeout)."""
        self.llm_fails = False
        """While True, chat messages fail after retrieval the way a broken model step fails."""
        self.chat_top_n = 3
        self.chat_similarity = 0.0
        self.chat_search_mode = "embedding"
        self._chats: dict[str, list[str]] = {}
        self._records: dict[str, _Record] = {}
        self._visits: dict[str, int] = {}

    def create_app(self) -> Starlette:
        return create_app(self)

    def reset(self) -> None:
        """Forget faults, recorded requests, chats, records, today's visit counts and expired
        tokens."""
        super().reset()
        with self._lock:
            self.expired_tokens.clear()
            self._chats.clear()
            self._records.clear()
            self._visits.clear()

    def forget_chats(self) -> None:
        """Drop every open chat, as MaxKB does when a chat expires from its cache."""
        with self._lock:
            self._chats.clear()

    def add_paragraphs(
        self, knowledge_id: str, rows: Iterable[Mapping[str, Any]], *, name: str | None = None
    ) -> FakeKnowledge:
        """Add ``{"content", "title", "id", "document_name", ...}`` rows to a knowledge base,
        creating it (named ``name`` or after its id) when it does not exist yet."""
        with self._lock:
            base = self.knowledge.get(knowledge_id)
            if base is None:
                base = self.knowledge[knowledge_id] = FakeKnowledge(
                    knowledge_id, name or f"knowledge-{knowledge_id[:8]}"
                )
            base.add(rows)
            return base

    def _record(self, request: Request, body: Any) -> None:
        with self._lock:
            self.requests.append(
                {
                    "method": request.method,
                    "path": request.url.path,
                    "query": dict(request.query_params),
                    "authorization": request.headers.get("authorization"),
                    "json": body,
                    "at": time.monotonic(),
                }
            )


_Handler = Callable[[Request, dict[str, str], Any], Awaitable[Response]]


class _Api:
    """The route handlers of one fake; each takes the request, its path parameters and body."""

    def __init__(self, fake: FakeMaxKB) -> None:
        self.fake = fake
        admin = re.escape("/" + fake.admin_path.strip("/")) if fake.admin_path.strip("/") else ""
        self.routes: list[tuple[re.Pattern[str], _Handler]] = [
            (
                re.compile(
                    rf"{admin}/api/workspace/(?P<workspace>[^/]+)/knowledge/(?P<knowledge>[^/]+)"
                    r"/hit_test"
                ),
                self.knowledge_hit_test,
            ),
            (
                re.compile(r"/api/application/(?P<application>[^/]+)/hit_test/?"),
                self.application_hit_test,
            ),
            (re.compile(r"/chat/api/open/?"), self.open_chat),
            (re.compile(r"/chat/api/chat_message/(?P<chat>[^/]+)/?"), self.chat_message),
            (
                re.compile(
                    r"/chat/api/historical_conversation/(?P<chat>[^/]+)/record/(?P<record>[^/]+)/?"
                ),
                self.chat_record,
            ),
            (re.compile(r"/chat/api/application/profile/?"), self.profile),
        ]

    def route(self, path: str) -> tuple[_Handler, dict[str, str]] | None:
        for pattern, handler in self.routes:
            if match := pattern.fullmatch(path):
                return handler, match.groupdict()
        return None

    def not_found(self, path: str) -> Response:
        """What MaxKB v2 answers for a path it has no route for (a trailing slash included):
        a 404 envelope under the admin API, its HTML 404 page elsewhere under the admin
        prefix, a redirect to the admin UI outside it; the v1 and chat prefixes a plain 404."""
        prefix = self.fake.admin_path.strip("/")
        admin = f"/{prefix}" if prefix else ""
        if path.startswith(f"{admin}/api/"):
            return _envelope(404, "HTTP_404_NOT_FOUND", status=404)
        if path.startswith(f"{admin}/"):
            return HTMLResponse(PAGE_NOT_FOUND, 404)
        if path.startswith(("/api/", "/chat/")):
            return PlainTextResponse("Not Found", 404)
        return RedirectResponse(
            f"{admin}/", 302, headers={"content-type": "text/html; charset=utf-8"}
        )

    async def fault_response(self, fault: Fault | None) -> Response | None:
        if fault is Fault.SLOW:
            await self.fake.sleep(SLOW_FAULT_S)
        elif fault is Fault.HTTP_500:
            return _envelope(500, "Internal Server Error", status=500)
        elif fault is Fault.HTTP_502:
            return Response(BAD_GATEWAY_HTML, 502, media_type="text/html")
        elif fault is Fault.CODE_500_IN_200:
            return _failure(DB_DOWN)
        elif fault is Fault.AUTH_401:
            return _envelope(1002, ILLEGAL_USER, status=401)
        return None

    def authenticate(self, request: Request, *, bearer: bool) -> _Caller | Response:
        """MaxKB's token check: v2 wants ``Bearer <token>``; v1 hands the raw header on."""
        header = request.headers.get("authorization")
        if header is None:
            return _envelope(1003, NOT_LOGGED_IN, status=401)
        if bearer and not header.startswith("Bearer "):
            return _envelope(1002, ILLEGAL_USER, status=401)
        token = header.removeprefix("Bearer ") if bearer else header
        if token.startswith(_APPLICATION_KEY_PREFIXES):
            if token != self.fake.api_key or not self.fake.key_active:
                return _envelope(500, INVALID_KEY, status=401)
            return _Caller("application", token)
        if token in self.fake.expired_tokens:
            return _envelope(1002, LOGIN_EXPIRED, status=401)
        if token == self.fake.user_token:
            return _Caller("user", token)
        return _envelope(1002, ILLEGAL_USER, status=401)

    def language(self, request: Request) -> Language:
        return _language(request, self.fake.language)

    def chat_caller(
        self, request: Request, expected: str, *, published: bool = True
    ) -> _Caller | Response:
        """Authentication, method and (unless ``published`` is False) publication checks."""
        method = request.method
        caller = self.authenticate(request, bearer=True)
        if isinstance(caller, Response):
            return caller
        if method != expected:
            return _not_allowed(method, self.language(request))
        if caller.kind != "application":
            if request.url.path.startswith("/chat/api/application/profile"):
                # The profile checks the token kind in its authentication; open fails later.
                return _envelope(401, IDENTITY_ERROR, status=401)
            return _failure(USER_TOKEN_ON_CHAT)
        if published and not self.fake.published:
            return _failure(UNPUBLISHED)
        return caller

    # ------------------------------------------------------------------ hit tests

    async def knowledge_hit_test(
        self, request: Request, params: dict[str, str], body: Any
    ) -> Response:
        caller = self.authenticate(request, bearer=True)
        if isinstance(caller, Response):
            return caller
        if request.method != "PUT":
            return _not_allowed(request.method, self.language(request))
        if caller.kind != "user" or params["workspace"] != self.fake.workspace:
            return _envelope(403, NO_PERMISSION, status=403)
        knowledge_id = params["knowledge"]
        try:
            uuid.UUID(knowledge_id)
        except ValueError:
            return _failure("id:Must be a valid UUID.")
        fields = body if isinstance(body, dict) else {}
        if problem := _hit_test_problem(fields, self.language(request)):
            return _failure(problem)
        base = self.fake.knowledge.get(knowledge_id)
        if base is None:
            return _failure("Knowledge id does not exist")
        return self.hit_test([base], fields, v1=False)

    async def application_hit_test(
        self, request: Request, params: dict[str, str], body: Any
    ) -> Response:
        caller = self.authenticate(request, bearer=False)
        if isinstance(caller, Response):
            return caller
        allowed = "PUT" if self.fake.v1_put_supported else "GET"
        if request.method != allowed:
            return _not_allowed(request.method, self.language(request))
        application_id = params["application"]
        if application_id != self.fake.application_id:
            if caller.kind == "application":
                return _envelope(403, NO_PERMISSION, status=403)
            return _failure("Application id does not exist")
        if request.method == "GET":
            fields: Mapping[str, Any] = dict(request.query_params)
        else:
            fields = body if isinstance(body, dict) else {}
        if problem := _hit_test_problem(fields, self.language(request)):
            return _failure(problem)
        return self.hit_test(self.fake.knowledge.values(), fields, v1=True)

    def hit_test(
        self, knowledge: Iterable[FakeKnowledge], fields: Mapping[str, Any], *, v1: bool
    ) -> Response:
        search_mode = str(fields["search_mode"])
        if search_mode not in SEARCH_MODES:
            return _failure(f"'{search_mode}' is not a valid SearchMode")
        hits = search(
            knowledge,
            str(fields["query_text"]),
            top_number=int(str(fields["top_number"])),
            similarity=float(str(fields["similarity"])),
            search_mode=search_mode,
        )
        rows = [_hit_test_row(hit, v1=v1) for hit in hits]
        return _envelope(200, "成功", rows) if v1 else _success(rows)

    # ------------------------------------------------------------------ chat

    async def open_chat(self, request: Request, params: dict[str, str], body: Any) -> Response:
        caller = self.chat_caller(request, "GET")
        if isinstance(caller, Response):
            return caller
        chat_id = str(uuid.uuid4())
        with self.fake._lock:
            self.fake._chats[chat_id] = []
        return _success(chat_id)

    async def chat_message(self, request: Request, params: dict[str, str], body: Any) -> Response:
        caller = self.chat_caller(request, "POST")
        if isinstance(caller, Response):
            return caller
        fields = body if isinstance(body, dict) else {}
        for key, label in (
            ("message", "message"),
            ("stream", "Is the answer in streaming mode"),
            ("re_chat", "Do you want to reply again"),
        ):
            if key not in fields:
                return _failure(f"{label}:{_MESSAGES[self.language(request)]['required']}")
        chat_id = params["chat"]
        fake = self.fake
        with fake._lock:
            known = chat_id in fake._chats
            visits = fake._visits.get(caller.credential, 0)
        if not known:
            return _envelope(500, UNKNOWN_CHAT, status=500)
        if visits >= fake.access_num:
            return _envelope(1002, ACCESS_LIMIT, status=461)
        if fields["stream"] is not False:
            return _failure("The fake MaxKB only answers stream=false")
        question = str(fields["message"])
        hits = search(
            fake.knowledge.values(),
            question,
            top_number=fake.chat_top_n,
            similarity=fake.chat_similarity,
            search_mode=fake.chat_search_mode,
        )
        answer = LLM_EXCEPTION if fake.llm_fails else _answer(question, hits)
        record_id = str(uuid.uuid4())
        with fake._lock:
            fake._visits[caller.credential] = visits + 1
            chat = fake._chats.setdefault(chat_id, [])
            chat.append(record_id)
            fake._records[record_id] = _Record(
                chat_id, _record_fields(record_id, chat_id, question, answer, hits, len(chat))
            )
        if fake.llm_fails:
            data = {
                "chat_id": chat_id,
                "id": record_id,
                "operate": True,
                "content": answer,
                "is_end": True,
                "completion_tokens": 0,
                "prompt_tokens": 0,
            }
            return _envelope(500, "Success", data, status=500)
        prompt_tokens = count_tokens(question) + sum(
            count_tokens(hit.paragraph["content"]) for hit in hits
        )
        # MaxKB swaps the two counts in its answers.
        return _success(
            {
                "chat_id": chat_id,
                "id": record_id,
                "operate": True,
                "content": answer,
                "is_end": True,
                "reasoning_content": "",
                "answer_list": [{"content": answer, "reasoning_content": ""}],
                "completion_tokens": prompt_tokens,
                "prompt_tokens": count_tokens(answer),
            }
        )

    async def chat_record(self, request: Request, params: dict[str, str], body: Any) -> Response:
        caller = self.chat_caller(request, "GET", published=False)
        if isinstance(caller, Response):
            return caller
        with self.fake._lock:
            record = self.fake._records.get(params["record"])
        if record is None or record.chat_id != params["chat"]:
            return _failure(UNKNOWN_CHAT)
        data = dict(record.fields)
        if not self.fake.show_source:
            del data["knowledge_list"], data["paragraph_list"]
        return _success(data)

    async def profile(self, request: Request, params: dict[str, str], body: Any) -> Response:
        caller = self.chat_caller(request, "GET", published=False)
        if isinstance(caller, Response):
            return caller
        return _success(_profile(self.fake))


def _answer(question: str, hits: Sequence[_Hit]) -> str:
    """The best paragraph's best-overlapping (then shortest) sentence, like a knowledge reply."""
    if not hits:
        return "根据已知信息无法回答这个问题。"
    best = max(hits, key=lambda hit: hit.score).paragraph["content"]
    sentences = _SENTENCE_RE.findall(best) or [best]
    return "根据已知信息，" + max(sentences, key=lambda text: (overlap(question, text), -len(text)))


def _record_fields(
    record_id: str, chat_id: str, question: str, answer: str, hits: Sequence[_Hit], index: int
) -> dict[str, Any]:
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000000+08:00", time.gmtime(time.time() + 8 * 3600))
    knowledge = {hit.knowledge.id: hit.knowledge for hit in hits}
    node = "ai-chat-node"
    return {
        "id": record_id,
        "chat_id": chat_id,
        "vote_status": "-1",
        "problem_text": question,
        "answer_text": answer,
        "message_tokens": count_tokens(question),
        "answer_tokens": count_tokens(answer),
        "const": 0,
        "improve_paragraph_id_list": [],
        "run_time": 0.05,
        "index": index,
        "answer_text_list": [
            [
                {
                    "view_type": node,
                    "content": answer,
                    "runtime_node_id": node,
                    "chat_record_id": node,
                    "child_node": {},
                    "reasoning_content": "",
                    "real_node_id": node,
                }
            ]
        ],
        "create_time": now,
        "update_time": now,
        "padding_problem_text": None,
        "knowledge_list": [
            {"id": base.id, "knowledge_name": base.name, "knowledge_type": 0}
            for base in knowledge.values()
        ],
        "paragraph_list": [_record_row(hit) for hit in hits],
        "execution_details": [],
    }


def _profile(fake: FakeMaxKB) -> dict[str, Any]:
    """The chat side's view of the application, with the keys a SIMPLE application has."""
    return {
        "id": fake.application_id,
        "create_time": "2026-11-25T03:53:32.452352+08:00",
        "update_time": "2026-11-25T03:53:32.500958+08:00",
        "workspace_id": fake.workspace,
        "is_publish": fake.published,
        "name": "fake-maxkb-app",
        "desc": "",
        "prologue": "您好，请提问。",
        "dialogue_number": 1,
        "knowledge_setting": {
            "top_n": fake.chat_top_n,
            "similarity": fake.chat_similarity,
            "search_mode": fake.chat_search_mode,
            "no_references_setting": {"value": "{question}", "status": "ai_questioning"},
            "max_paragraph_char_number": 5000,
        },
        "model_setting": {
            "prompt": "已知信息：\n{data}\n用户问题：\n{question}\n请根据已知信息回答。",
            "system": "你是一个知识库问答助手。",
            "no_references_prompt": "{question}",
            "reasoning_content_enable": False,
        },
        "model_params_setting": {"num_predict": 1024, "temperature": 0.3},
        "tts_model_params_setting": {},
        "problem_optimization": False,
        "icon": "./favicon.ico",
        "work_flow": None,
        "type": "SIMPLE",
        "problem_optimization_prompt": None,
        "tts_model_enable": False,
        "stt_model_enable": False,
        "tts_type": "BROWSER",
        "tts_autoplay": False,
        "stt_autosend": False,
        "clean_time": 180,
        "publish_time": "2026-11-25T03:53:32.500899+08:00" if fake.published else None,
        "file_upload_enable": False,
        "file_upload_setting": {},
        "folder": "default",
        "user": "f0dd8f71-e4ee-11ee-8c84-a8a1595801ab",
        "model": "01a20f1e-e3dd-7700-8275-545dcf95f0e2",
        "tts_model": None,
        "stt_model": None,
        "stt_model_id": None,
        "tts_model_id": None,
        "show_source": fake.show_source,
        "show_exec": False,
        "language": None,
    }


def create_app(fake: FakeMaxKB) -> Starlette:
    """The ASGI app serving ``fake``: every request is recorded, then faults, then routes."""
    api = _Api(fake)

    async def dispatch(request: Request) -> Response:
        body = await json_body(request)
        if body is NOT_JSON:
            fake._record(request, None)
            return _failure("JSON parse error - Expecting value: line 1 column 1 (char 0)")
        fake._record(request, body)
        found = api.route(request.url.path)
        if found is None:
            return api.not_found(request.url.path)
        if failure := await api.fault_response(fake._take_fault()):
            return failure
        handler, params = found
        return await handler(request, params, body)

    return catch_all(dispatch)


def main() -> None:
    """Run a fake MaxKB in the foreground, for trying the MaxKB backend by hand."""
    parser = command_line("python -m evals.fakes.maxkb", "Run a fake MaxKB server.", 8080)
    parser.add_argument("--fixtures", type=Path, default=FIXTURES_DIR, help="captured exchanges")
    parser.add_argument("--user-token", default=DEFAULT_USER_TOKEN)
    parser.add_argument("--api-key", default=DEFAULT_API_KEY)
    parser.add_argument("--application-id", default=DEFAULT_APPLICATION_ID)
    parser.add_argument("--v1-get-only", action="store_true", help="act as v1.10.8-lts or older")
    parser.add_argument("--hide-source", action="store_true", help="show_source off")
    parser.add_argument("--access-num", type=int, default=DEFAULT_ACCESS_NUM)
    args = parser.parse_args()
    fake = FakeMaxKB(
        knowledge=[load_fixture_knowledge(args.fixtures)],
        user_token=args.user_token,
        api_key=args.api_key,
        application_id=args.application_id,
        v1_put_supported=not args.v1_get_only,
        show_source=not args.hide_source,
        access_num=args.access_num,
        port=args.port,
    )
    print(
        f"fake MaxKB on http://{args.host}:{args.port}\n"
        f"  QQRAG_MAXKB_TOKEN={fake.user_token}\n"
        f"  QQRAG_MAXKB_API_KEY={fake.api_key}\n"
        f"  QQRAG_MAXKB_APPLICATION_ID={fake.application_id}\n"
        f"  QQRAG_MAXKB_KNOWLEDGE_IDS={','.join(fake.knowledge)}",
        flush=True,
    )
    serve_forever(create_app(fake), args.host, args.port)


if __name__ == "__main__":
    main()
