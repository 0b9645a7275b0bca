"""A fake Ollama server on 127.0.0.1 for tests, evals and benchmarks.

It speaks Ollama's HTTP protocol closely enough (NDJSON streaming, error bodies, metrics, tool
calls, thinking, logprobs) that the real clients -- ``langchain_ollama.ChatOllama`` and
``OllamaEmbeddings``, the ``ollama`` package, plain httpx -- work against it unchanged. The
"model" behind it is a handful of deterministic rules (see :func:`answer`), so tests can assert
exact answers:

1. ``format`` is a JSON schema: JSON filled from the schema (intent enums chosen by rules,
   question-like strings get a standalone rewrite of the last user message).
2. Tools are offered, no tool has run yet and the evidence is weak: call the first tool that
   takes a string, with the question.
3. Numbered evidence (``[n] ...`` lines) is present: the best-overlapping sentence, cited, or
   :data:`NO_ANSWER` when nothing overlaps (also when a tool ran and brought no evidence). A
   question with a referring word (它, 这个…) after earlier user turns is understood through
   them, as the rewrite of rule 1 would put it: a real model reads the conversation too.
4. Otherwise: a fixed greeting.

Token counts are estimates: one token per CJK character, per ASCII word (letters and digits)
and per other visible symbol (see :func:`split_tokens`).

Run it by hand with ``python -m evals.fakes.ollama --port 11434``.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import json
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Self

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse

from evals.fakes._server import (
    NOT_JSON,
    ScriptedServer,
    catch_all,
    command_line,
    json_body,
    serve_forever,
)

OLLAMA_VERSION = "0.12.11"
DEFAULT_MODELS = ("qwen3:8b", "qwen3-embedding:0.6b", "dengcao/Qwen3-Reranker-0.6B:Q8_0")
EMBEDDING_DIM = 256
GREETING = "你好！我是知识库问答助手，可以问我文档里的问题。"
NO_ANSWER = "知识库里没有找到相关内容。"
# Rule 2 calls a tool when the best evidence sentence covers less of the question than this.
TOOL_CALL_THRESHOLD = 0.34
SLOW_FAULT_S = 30.0
HANG_FAULT_S = 24 * 3600.0

_HTTP_500_MESSAGE = "llama runner process has terminated: exit status 2"
_STREAM_ERROR_MESSAGE = "an error was encountered while running the model: unexpected EOF"
_QUEUE_FULL_MESSAGE = "server busy, please try again.  maximum pending requests exceeded"

# Reported metrics need speeds even when the latency model does not slow anything down.
_NOMINAL_LOAD_S = 0.012
_NOMINAL_PREFILL_TPS = 1500.0
_NOMINAL_DECODE_TPS = 45.0
_TOKENS_PER_CHUNK = 2
_VOCAB_SIZE = 151_936
_MODIFIED_AT = "2025-11-01T09:30:12.345678901+08:00"


@dataclass(frozen=True)
class LatencyModel:
    """Artificial delays: before the first chunk, then per streamed chunk."""

    fixed_s: float = 0.0
    prefill_tokens_per_s: float | None = None
    decode_tokens_per_s: float | None = None

    def prefill_s(self, prompt_tokens: int) -> float:
        """Delay before the first chunk: ``fixed_s + prompt_tokens / prefill speed``."""
        if not self.prefill_tokens_per_s:
            return self.fixed_s
        return self.fixed_s + prompt_tokens / self.prefill_tokens_per_s

    def decode_s(self, tokens: int) -> float:
        """Delay before a chunk of ``tokens`` generated tokens."""
        return tokens / self.decode_tokens_per_s if self.decode_tokens_per_s else 0.0


class Fault(enum.Enum):
    """Failures that :meth:`FakeOllama.fail_next` scripts for the next model requests."""

    HTTP_500 = "http_500"  # 500 {"error": "llama runner process has terminated: ..."}
    MODEL_NOT_FOUND = "model_not_found"  # 404, as if the model had never been pulled
    STREAM_CUT = "stream_cut"  # some chunks, then the connection closes without the done line
    STREAM_ERROR_LINE = "stream_error_line"  # some chunks, then a line {"error": "..."}
    MALFORMED_JSON = "malformed_json"  # with a ``format``: content that is not valid JSON
    SLOW = "slow"  # 30 s before answering (stop() cuts it short)
    HANG = "hang"  # no answer at all until stop(): a model server that accepted and froze
    QUEUE_FULL = "queue_full"  # 503 "server busy, please try again. ..."


# --------------------------------------------------------------------------- text measures

_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_TOKEN_RE = re.compile(rf"\s*(?:[{_CJK}]|[A-Za-z0-9_]+|\S)|\s+")
_WORD_RUN_RE = re.compile(rf"[{_CJK}A-Za-z0-9]+")


def split_tokens(text: str) -> list[str]:
    """Split ``text`` into token-like pieces that concatenate back to it.

    One piece per CJK character, per ASCII word and per other visible symbol; whitespace rides
    on the following piece.
    """
    return _TOKEN_RE.findall(text)


# Cached: every request repeats the conversation so far and the same passages, and the fake's
# own time counts in the service's latency in zero-latency benchmarks.
@functools.lru_cache(maxsize=8192)
def count_tokens(text: str) -> int:
    """The fake's token estimate for ``text`` (see :func:`split_tokens`)."""
    return sum(1 for piece in split_tokens(text) if not piece.isspace())


@functools.lru_cache(maxsize=8192)
def char_bigrams(text: str) -> frozenset[str]:
    """Character bigrams inside runs of CJK/ASCII word characters (a lone character counts)."""
    grams: set[str] = set()
    for run in _WORD_RUN_RE.findall(text.lower()):
        if len(run) == 1:
            grams.add(run)
        grams.update(run[i : i + 2] for i in range(len(run) - 1))
    return frozenset(grams)


def overlap(question: str, text: str) -> float:
    """Share of the question's character bigrams found in ``text``, from 0 to 1."""
    wanted = char_bigrams(question)
    return len(wanted & char_bigrams(text)) / len(wanted) if wanted else 0.0


def embed_text(text: str, dimensions: int = EMBEDDING_DIM) -> list[float]:
    """A deterministic, L2-normalised embedding: hashed character unigrams and bigrams.

    Signed feature hashing keeps unrelated texts near cosine 0 while texts that share
    characters score high. ``dimensions`` truncates before normalising, as Ollama does.
    """
    vector = [0.0] * EMBEDDING_DIM
    for run in _WORD_RUN_RE.findall(text.lower()):
        for feature in [*run, *(run[i : i + 2] for i in range(len(run) - 1))]:
            digest = hashlib.blake2b(feature.encode(), digest_size=8).digest()
            bucket = int.from_bytes(digest[:4], "little") % EMBEDDING_DIM
            vector[bucket] += 1.0 if digest[4] & 1 else -1.0
    vector = vector[:dimensions]
    norm = math.sqrt(sum(value * value for value in vector))
    if norm == 0.0:
        return [1.0] + [0.0] * (dimensions - 1)
    return [value / norm for value in vector]


def _token_id(piece: str) -> int:
    return int.from_bytes(hashlib.blake2b(piece.encode(), digest_size=4).digest(), "little") % (
        _VOCAB_SIZE
    )


# --------------------------------------------------------------------------- the rule-based model

_CONTEXT_BLOCK_RE = re.compile(r"<context>.*?</context>", re.S)
_QUESTION_BLOCK_RE = re.compile(r"<question>(.*?)</question>", re.S)
_QUESTION_LINE_RE = re.compile(r"^\s*问题[：:]\s*(.*)", re.M | re.S)
_PASSAGE_START_RE = re.compile(r"^\[(\d{1,2})\]", re.M)
_PASSAGE_END_RE = re.compile(r"^\[\d{1,2}\]|</context>|<question>|^\s*问题[：:]", re.M)
_SENTENCE_END_RE = re.compile(r"[。！？!?；\n]")
_PUNCTUATION_RE = re.compile(r"[\s？?。！!，,、；;：:“”\"'‘’（）()]+")
_REFERRING_RE = re.compile("它们|这个|那个|它|这|那|该|其|他|她|此")
_LEADING_CONNECTIVE_RE = re.compile(r"^(那么|那)[，,\s]*")
# Longest first, so that 为什么 goes before 什么 and 哪个 before 哪.
_INTERROGATIVES = (
    *("为什么", "什么", "怎么", "如何", "哪个", "哪里", "多少", "请问", "有多久", "多久", "多长"),
    *("吗", "呢", "哪", "谁", "是", "吧", "啊", "呀", "几"),
)
_INJECTION_RE = re.compile(
    r"忽略(之前|以上|前面)的?(所有)?(指令|说明|提示)"
    r"|ignore\s+(all\s+)?(previous|above)\s+instructions"
    r"|系统提示词",
    re.I,
)
_SMALL_TALK_RE = re.compile(
    r"你好|您好|在吗|谢谢|多谢|早上好|晚安|你是谁|哈哈|\bhi\b|\bhello\b|\bthanks\b", re.I
)
_SMALL_TALK_MAX_REST = 5
_SHORT_QUESTION_TOKENS = 6
_QUESTION_FIELD_WORDS = ("question", "query", "rewrite")

Message = tuple[str, str]
"""A chat message reduced to (role, content)."""


@dataclass
class Reply:
    """What the fake model says, before it is cut into wire chunks."""

    content: str = ""
    thinking: str | None = None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    # The distribution behind the first content token (the reranker's yes/no); other tokens
    # are certain.
    first_token_probs: dict[str, float] | None = None


class _Passage(NamedTuple):
    number: int
    text: str


class _Evidence(NamedTuple):
    score: float
    number: int
    sentence: str


def extract_question(text: str) -> str:
    """The question inside a user message: in a ``<question>`` block, after a ``问题：`` line,
    else without ``<context>``."""
    if match := _QUESTION_BLOCK_RE.search(text):
        return match.group(1).strip()
    if match := _QUESTION_LINE_RE.search(text):
        return match.group(1).strip()
    return _CONTEXT_BLOCK_RE.sub("", text).strip()


def current_question(messages: Sequence[Message]) -> str:
    """The question of the last user message ("" when there is none)."""
    for role, content in reversed(messages):
        if role == "user":
            return extract_question(content)
    return ""


def find_passages(messages: Sequence[Message]) -> list[_Passage]:
    """Numbered passages ``[n] ...`` at line starts in system, user and tool messages."""
    passages: list[_Passage] = []
    for role, content in messages:
        if role not in ("system", "user", "tool"):
            continue
        for start in _PASSAGE_START_RE.finditer(content):
            number = int(start.group(1))
            if not 1 <= number <= 99:
                continue
            end = _PASSAGE_END_RE.search(content, start.end())
            text = content[start.end() : end.start() if end else len(content)]
            passages.append(_Passage(number, text.strip()))
    return passages


def best_evidence(passages: Sequence[_Passage], question: str) -> _Evidence | None:
    """The sentence with the highest bigram overlap; ties go to the lowest n, then earliest.

    A passage's first line is its header (title and source) when a body follows: a model
    answers from the body, not by quoting the header.
    """
    best: _Evidence | None = None
    for passage in sorted(passages, key=lambda p: p.number):
        header, _, body = passage.text.partition("\n")
        for sentence in _SENTENCE_END_RE.split(body if body.strip() else header):
            sentence = sentence.strip()
            if not sentence:
                continue
            score = overlap(question, sentence)
            if best is None or score > best.score:
                best = _Evidence(score, passage.number, sentence)
    return best


def _topic(question: str) -> str:
    """The subject of a question: what precedes its first 的 ("X的续航有多久" -> "X"), else
    the question without interrogatives and punctuation."""
    question = question.split("的", 1)[0]
    for word in _INTERROGATIVES:
        question = question.replace(word, "")
    return _PUNCTUATION_RE.sub("", question)


def _refers_back(question: str) -> bool:
    """A referring word (它, 这个…) beyond a leading 那/那么, which only connects."""
    return bool(_REFERRING_RE.search(_LEADING_CONNECTIVE_RE.sub("", question)))


def _rewrite_follow_up(question: str, topic: str) -> str:
    if _refers_back(question):
        question = _LEADING_CONNECTIVE_RE.sub("", question)
    if referring := _REFERRING_RE.search(question):
        return question[: referring.start()] + topic + question[referring.end() :]
    if count_tokens(_PUNCTUATION_RE.sub("", question)) <= _SHORT_QUESTION_TOKENS:
        return f"{topic}的{question}"
    return question


def rewrite_question(messages: Sequence[Message]) -> str:
    """A standalone version of the last user question, using the earlier user turns.

    A follow-up (it has a referring word such as 它/这个, or is at most six tokens) gets the
    previous question's topic (that question without interrogatives and punctuation): in place
    of the first referring word, else as ``topic + "的" + question``. Earlier follow-ups are
    rewritten first, so the topic carries through several turns.
    """
    standalone = ""
    for role, content in messages:
        if role != "user":
            continue
        question = extract_question(content)
        topic = _topic(standalone)
        standalone = _rewrite_follow_up(question, topic) if topic else question
    return standalone


def understood_question(messages: Sequence[Message]) -> str:
    """The last question as a model reading the whole conversation takes it: a referring word
    stands for the earlier subject (see :func:`rewrite_question`); other questions as asked."""
    question = current_question(messages)
    earlier = sum(role == "user" for role, _ in messages) > 1
    if earlier and _refers_back(question):
        return rewrite_question(messages)
    return question


def _is_small_talk(text: str) -> bool:
    if not _SMALL_TALK_RE.search(text):
        return False
    rest = _PUNCTUATION_RE.sub("", _SMALL_TALK_RE.sub("", text))
    return len(rest) <= _SMALL_TALK_MAX_REST


def choose_enum(values: Sequence[Any], text: str) -> Any:
    """Pick an intent-like enum value for ``text``: command, blocked, chitchat, knowledge."""
    if "command" in values and text.lstrip().startswith("/"):
        return "command"
    if "blocked" in values and _INJECTION_RE.search(text):
        return "blocked"
    if "chitchat" in values and _is_small_talk(text):
        return "chitchat"
    if "knowledge" in values:
        return "knowledge"
    return values[0] if values else None


def _resolve_ref(ref: str, root: Mapping[str, Any]) -> Mapping[str, Any]:
    node: Any = root
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def fill_schema(
    schema: Mapping[str, Any],
    *,
    question: str,
    rewrite: str,
    root: Mapping[str, Any] | None = None,
    name: str = "",
) -> Any:
    """A value that validates against ``schema`` (the subset Pydantic and LangChain emit)."""
    root = schema if root is None else root

    def fill(sub: Mapping[str, Any], sub_name: str) -> Any:
        return fill_schema(sub, question=question, rewrite=rewrite, root=root, name=sub_name)

    if "$ref" in schema:
        return fill(_resolve_ref(schema["$ref"], root), name)
    for combiner in ("anyOf", "oneOf", "allOf"):
        options = [option for option in schema.get(combiner, []) if option.get("type") != "null"]
        if options:
            return fill(options[0], name)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return choose_enum(schema["enum"], question)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or "properties" in schema:
        properties: Mapping[str, Any] = schema.get("properties", {})
        value = {key: fill(sub, key) for key, sub in properties.items()}
        value.update({key: "" for key in schema.get("required", []) if key not in value})
        return value
    if kind == "array":
        return []
    if kind == "integer":
        return 1
    if kind == "number":
        return 0.5
    if kind == "boolean":
        return False
    if kind == "null":
        return None
    return rewrite if any(word in name.lower() for word in _QUESTION_FIELD_WORDS) else ""


def _tool_call(tools: Sequence[Any], question: str) -> dict[str, Any] | None:
    for tool in tools:
        function = tool.get("function") if isinstance(tool, Mapping) else None
        if not isinstance(function, Mapping):
            continue
        properties = (function.get("parameters") or {}).get("properties") or {}
        for key, prop in properties.items():
            if isinstance(prop, Mapping) and prop.get("type") == "string":
                arguments = {key: question}
                seed = json.dumps([function.get("name"), arguments], ensure_ascii=False)
                return {
                    "id": "call_" + hashlib.sha256(seed.encode()).hexdigest()[:8],
                    "function": {"index": 0, "name": function.get("name"), "arguments": arguments},
                }
    return None


def _thinking_text(question: str) -> str:
    question = question.rstrip("？?。.！!")
    return f"用户问的是：{question}。先看看手头的资料里有没有相关内容，再给出简短的回答。"


def answer(
    messages: Sequence[Message],
    *,
    format_: Any = None,
    tools: Sequence[Any] = (),
    think: bool = False,
) -> Reply:
    """The fake model's deterministic answer to a conversation (rules in the module docstring).

    After a tool has run, a lack of evidence is answered with :data:`NO_ANSWER` rather than
    the greeting: the knowledge base was asked and had nothing.
    """
    question = current_question(messages)
    thinking = _thinking_text(question) if think else None
    if isinstance(format_, Mapping):
        rewrite = rewrite_question(messages)
        value = fill_schema(format_, question=question, rewrite=rewrite)
        return Reply(json.dumps(value, ensure_ascii=False), thinking)
    if format_ == "json":
        return Reply("{}", thinking)
    passages = find_passages(messages)
    question = understood_question(messages)
    evidence = best_evidence(passages, question)
    tool_ran = any(role == "tool" for role, _ in messages)
    weak = evidence is None or evidence.score < TOOL_CALL_THRESHOLD
    if tools and not tool_ran and weak and (call := _tool_call(tools, question)):
        return Reply("", thinking, [call])
    if evidence is not None and evidence.score > 0:
        sentence = evidence.sentence.rstrip("，,。.；;：: ")
        return Reply(f"{sentence}[{evidence.number}]。", thinking)
    if passages or tool_ran:
        return Reply(NO_ANSWER, thinking)
    return Reply(GREETING, thinking)


_RERANK_RE = re.compile(r"<Query>:\s*(.*?)\s*<Document>:\s*(.*?)\s*(?:<\|im_end\|>|$)", re.S)


def rerank_reply(prompt: str) -> Reply | None:
    """A Qwen3-Reranker style yes/no answer, or None when ``prompt`` is not a reranker prompt.

    P(yes) is the query's bigram overlap with the document, kept off 0 and 1 so that its
    logprob stays finite.
    """
    match = _RERANK_RE.search(prompt)
    if match is None:
        return None
    p_yes = min(max(overlap(match.group(1), match.group(2)), 0.001), 0.999)
    return Reply("yes" if p_yes >= 0.5 else "no", first_token_probs={"yes": p_yes, "no": 1 - p_yes})


# --------------------------------------------------------------------------- model metadata


@dataclass(frozen=True)
class _ModelCard:
    name: str
    family: str
    parameter_count: int
    quantization: str
    capabilities: tuple[str, ...]

    @property
    def is_embedding(self) -> bool:
        return "embedding" in self.capabilities

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.name.encode()).hexdigest()

    @property
    def size(self) -> int:
        bits = {"Q8_0": 8.5, "F16": 16.0, "BF16": 16.0}.get(self.quantization, 4.85)
        return int(self.parameter_count * bits / 8)

    def details(self) -> dict[str, Any]:
        return {
            "parent_model": "",
            "format": "gguf",
            "family": self.family,
            "families": [self.family],
            "parameter_size": _parameter_size(self.parameter_count),
            "quantization_level": self.quantization,
        }

    def listing(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.name,
            "modified_at": _MODIFIED_AT,
            "size": self.size,
            "digest": self.digest,
            "details": self.details(),
        }


def _parameter_size(count: int) -> str:
    if count >= 1_000_000_000:
        return f"{count / 1e9:.1f}B"
    return f"{count / 1e6:.2f}M"


def _model_card(name: str) -> _ModelCard:
    lower = name.lower()
    base = lower.rsplit("/", 1)[-1].split(":")[0]
    family = match.group() if (match := re.match(r"[a-z]+\d*", base)) else base
    size = re.search(r"(\d+(?:\.\d+)?)b\b", lower)
    quantization = re.search(r"q\d+_[0-9a-z_]+|bf16|f16", lower)
    if "embed" in lower:
        capabilities: tuple[str, ...] = ("embedding",)
    elif "rerank" in lower:
        capabilities = ("completion",)
    else:
        capabilities = ("completion", "tools", "thinking")
    return _ModelCard(
        name=name,
        family=family,
        parameter_count=int(float(size.group(1)) * 1e9) if size else 7_000_000_000,
        quantization=quantization.group().upper() if quantization else "Q4_K_M",
        capabilities=capabilities,
    )


def _same_model(served: str, requested: str) -> bool:
    return served.removesuffix(":latest") == requested.removesuffix(":latest")


def _show(card: _ModelCard) -> dict[str, Any]:
    arch = card.family
    return {
        "license": "Apache License 2.0",
        "modelfile": f"# Modelfile generated by the fake Ollama\nFROM {card.name}\n",
        "parameters": (
            'stop "<|im_start|>"\nstop "<|im_end|>"\ntemperature 0.6\ntop_k 20\ntop_p 0.95'
        ),
        "template": (
            "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n"
            "{{ end }}<|im_start|>assistant\n"
        ),
        "details": card.details(),
        "model_info": {
            "general.architecture": arch,
            "general.parameter_count": card.parameter_count,
            f"{arch}.context_length": 40960,
            f"{arch}.embedding_length": EMBEDDING_DIM if card.is_embedding else 4096,
        },
        "capabilities": list(card.capabilities),
        "modified_at": _MODIFIED_AT,
    }


# --------------------------------------------------------------------------- wire helpers


def _timestamp(offset_s: float = 0.0) -> str:
    """RFC 3339 UTC with nanoseconds, trailing zeros trimmed, as Go's RFC3339Nano writes it."""
    seconds, nanos = divmod(time.time_ns() + int(offset_s * 1e9), 1_000_000_000)
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    fraction = f"{nanos:09d}".rstrip("0")
    return f"{base}.{fraction}Z" if fraction else f"{base}Z"


def _dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def _json(value: Any, status: int = 200) -> Response:
    return Response(_dumps(value), status, media_type="application/json; charset=utf-8")


def _error(status: int, message: str) -> Response:
    return _json({"error": message}, status)


def _not_found(model: str) -> Response:
    return _error(404, f'model "{model}" not found, try pulling it first')


class _StreamCut(Exception):
    """Raised inside a response body to drop the connection mid-response on purpose."""


def _is_stream_cut(exc: BaseException | None) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return any(_is_stream_cut(inner) for inner in exc.exceptions)
    return isinstance(exc, _StreamCut)


class _HideStreamCuts(logging.Filter):
    """Keeps uvicorn from logging a deliberate STREAM_CUT as an application crash."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and _is_stream_cut(record.exc_info[1]))


def _hide_stream_cuts_in_logs() -> None:
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(existing, _HideStreamCuts) for existing in logger.filters):
        logger.addFilter(_HideStreamCuts())


def _think_enabled(value: Any) -> bool:
    return value is True or value in ("low", "medium", "high")


def _messages(raw: Any) -> list[Message] | None:
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(m, Mapping) for m in raw):
        return None
    return [(str(m.get("role") or ""), str(m.get("content") or "")) for m in raw]


def _prompt_tokens(messages: Sequence[Message], tools: Sequence[Any]) -> int:
    tokens = sum(count_tokens(content) for _, content in messages)
    if tools:
        tokens += count_tokens(json.dumps(tools, ensure_ascii=False))
    return max(tokens, 1)


def _apply_limits(reply: Reply, options: Mapping[str, Any]) -> str:
    """Honour ``stop`` and ``num_predict`` on the content; return the done_reason."""
    stops = options.get("stop") or []
    for stop in stops if isinstance(stops, list) else [stops]:
        if isinstance(stop, str) and stop and stop in reply.content:
            reply.content = reply.content[: reply.content.index(stop)]
    limit = options.get("num_predict")
    pieces = split_tokens(reply.content)
    if isinstance(limit, int) and limit > 0 and len(pieces) > limit:
        reply.content = "".join(pieces[:limit])
        return "length"
    return "stop"


def _logprob(token: str, probs: Mapping[str, float] | None, top: int) -> dict[str, Any]:
    probs = probs or {token: 1.0}
    entry: dict[str, Any] = {
        "token": token,
        "logprob": math.log(probs.get(token, 1.0)),
        "bytes": list(token.encode()),
    }
    if top > 0:
        ranked = sorted(probs.items(), key=lambda item: -item[1])[:top]
        entry["top_logprobs"] = [
            {"token": t, "logprob": math.log(p), "bytes": list(t.encode())} for t, p in ranked
        ]
    return entry


_Kind = Literal["chat", "generate"]


class _Chunk(NamedTuple):
    payload: dict[str, Any]  # the message (chat) or the top-level fields (generate)
    tokens: int
    logprobs: list[dict[str, Any]] | None


@dataclass
class _Job:
    """One chat or generate answer, ready to go on the wire."""

    kind: _Kind
    model: str
    reply: Reply
    prompt_tokens: int
    stream: bool
    logprobs: bool
    top_logprobs: int
    fault: Fault | None
    done_reason: str
    context: list[int] | None = None  # generate without raw mode returns its token context

    def chunks(self) -> list[_Chunk]:
        reply = self.reply
        chunks: list[_Chunk] = []
        if reply.thinking:
            payload = self.payload("", thinking=reply.thinking)
            chunks.append(_Chunk(payload, count_tokens(reply.thinking), None))
        if reply.tool_calls:
            tokens = count_tokens(json.dumps(reply.tool_calls, ensure_ascii=False))
            chunks.append(_Chunk(self.payload("", tool_calls=reply.tool_calls), tokens, None))
        pieces = split_tokens(reply.content)
        for start in range(0, len(pieces), _TOKENS_PER_CHUNK):
            group = pieces[start : start + _TOKENS_PER_CHUNK]
            logprobs = None
            if self.logprobs:
                logprobs = [
                    _logprob(
                        piece,
                        reply.first_token_probs if start + offset == 0 else None,
                        self.top_logprobs,
                    )
                    for offset, piece in enumerate(group)
                ]
            chunks.append(_Chunk(self.payload("".join(group)), len(group), logprobs))
        return chunks

    def payload(
        self,
        content: str,
        *,
        thinking: str | None = None,
        tool_calls: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        key = "content" if self.kind == "chat" else "response"
        payload: dict[str, Any] = {"role": "assistant"} if self.kind == "chat" else {}
        payload[key] = content
        if thinking:
            payload["thinking"] = thinking
        if tool_calls:
            payload["tool_calls"] = tool_calls
        return payload

    def line(self, payload: Mapping[str, Any], *, done: bool) -> dict[str, Any]:
        line: dict[str, Any] = {"model": self.model, "created_at": _timestamp()}
        if self.kind == "chat":
            line["message"] = dict(payload)
        else:
            line.update(payload)
        line["done"] = done
        return line


def _job(
    kind: _Kind, request: Mapping[str, Any], reply: Reply, prompt_tokens: int, fault: Fault | None
) -> _Job:
    options = request.get("options")
    if fault is Fault.MALFORMED_JSON and request.get("format"):
        # A strict prefix of a JSON object never parses.
        reply.content = reply.content[: max(1, len(reply.content) // 2)]
    return _Job(
        kind=kind,
        model=request["model"],
        reply=reply,
        prompt_tokens=prompt_tokens,
        stream=request.get("stream") is not False,
        logprobs=request.get("logprobs") is True,
        top_logprobs=request.get("top_logprobs") or 0,
        fault=fault,
        done_reason=_apply_limits(reply, options if isinstance(options, Mapping) else {}),
    )


_MODEL_PATHS = frozenset({"/api/chat", "/api/generate", "/api/embed", "/api/embeddings"})


def _model_request(body: Any) -> tuple[dict[str, Any], Response | None]:
    """The request object, or a 400 answer as Ollama gives for a bad body."""
    if body is NOT_JSON:
        return {}, _error(400, "invalid character in request body: not valid JSON")
    if body is None:
        return {}, _error(400, "missing request body")
    if not isinstance(body, dict):
        return {}, _error(400, "json: cannot unmarshal request body into an object")
    model = body.get("model") or body.get("name")
    if not isinstance(model, str) or not model:
        return {}, _error(400, "model is required")
    top_logprobs = body.get("top_logprobs")
    if top_logprobs is not None and (
        not isinstance(top_logprobs, int) or not 0 <= top_logprobs <= 20
    ):
        return {}, _error(400, "top_logprobs must be between 0 and 20")
    return {**body, "model": model}, None


# --------------------------------------------------------------------------- the server


class FakeOllama(ScriptedServer[Fault]):
    """A fake Ollama server in a background thread; see the module docstring.

    Use it as a context manager, or call :meth:`start` and :meth:`stop`. ``requests`` records
    every request received as ``{"path", "method", "json", "at"}`` (``at``: ``time.monotonic()``
    on arrival, so tests can tell whether two requests overlapped). Faults from
    :meth:`fail_next` meet model requests (chat, generate, embed) only. MALFORMED_JSON only
    changes answers to requests that ask for a ``format``; on embeddings, STREAM_ERROR_LINE is a
    500 and STREAM_CUT drops the connection halfway through the body.
    """

    label = "fake Ollama"

    def __init__(
        self,
        *,
        models: Sequence[str] = DEFAULT_MODELS,
        latency: LatencyModel | None = None,
        port: int = 0,
    ) -> None:
        super().__init__(port)
        self.models = tuple(models)
        self.latency = latency or LatencyModel()
        self._cards = [_model_card(name) for name in self.models]

    def create_app(self) -> Starlette:
        return create_app(self)

    def start(self) -> Self:
        _hide_stream_cuts_in_logs()
        return super().start()

    def calls(self, path: str) -> list[dict[str, Any]]:
        """The JSON bodies of the recorded requests to ``path``, oldest first."""
        with self._lock:
            return [request["json"] for request in self.requests if request["path"] == path]

    def _record(self, method: str, path: str, body: Any) -> None:
        with self._lock:
            self.requests.append(
                {"path": path, "method": method, "json": body, "at": time.monotonic()}
            )

    def _card(self, model: str) -> _ModelCard | None:
        return next((card for card in self._cards if _same_model(card.name, model)), None)

    def _used_models(self) -> set[str]:
        with self._lock:
            return {
                request["json"]["model"]
                for request in self.requests
                if request["path"] in _MODEL_PATHS
                and isinstance(request["json"], dict)
                and isinstance(request["json"].get("model"), str)
            }


_Handler = Callable[[Any], Awaitable[Response]]


class _Api:
    """The route handlers of one fake; each takes the parsed JSON body."""

    def __init__(self, fake: FakeOllama) -> None:
        self.fake = fake
        self.routes: dict[tuple[str, str], _Handler] = {
            ("GET", "/"): self.root,
            ("HEAD", "/"): self.root,
            ("GET", "/api/version"): self.version,
            ("GET", "/api/tags"): self.tags,
            ("GET", "/api/ps"): self.ps,
            ("POST", "/api/show"): self.show,
            ("POST", "/api/chat"): self.chat,
            ("POST", "/api/generate"): self.generate,
            ("POST", "/api/embed"): self.embed,
            ("POST", "/api/embeddings"): self.embeddings,
        }

    async def root(self, _body: Any) -> Response:
        return PlainTextResponse("Ollama is running")

    async def version(self, _body: Any) -> Response:
        return _json({"version": OLLAMA_VERSION})

    async def tags(self, _body: Any) -> Response:
        return _json({"models": [card.listing() for card in self.fake._cards]})

    async def ps(self, _body: Any) -> Response:
        used = self.fake._used_models()
        loaded = [card for card in self.fake._cards if any(_same_model(card.name, m) for m in used)]
        expires_at = _timestamp(offset_s=300)
        return _json(
            {
                "models": [
                    {
                        **card.listing(),
                        "expires_at": expires_at,
                        "size_vram": card.size,
                        "context_length": 4096,
                    }
                    for card in loaded
                ]
            }
        )

    async def show(self, body: Any) -> Response:
        request, error = _model_request(body)
        if error is not None:
            return error
        card = self.fake._card(request["model"])
        if card is None:
            return _error(404, f"model '{request['model']}' not found")
        return _json(_show(card))

    async def _model_call(
        self, body: Any, route: str | None
    ) -> tuple[dict[str, Any], Fault | None, Response | None]:
        """The request, the fault it meets and the error to answer instead, checked in
        Ollama's order: the body, an injected fault, then the model (and, for a generating
        route, the model's capabilities)."""
        request, error = _model_request(body)
        if error is not None:
            return request, None, error
        fault = self.fake._take_fault()
        if error := await self._fault_response(fault, request["model"]):
            return request, fault, error
        if route is not None:
            return request, fault, self._capability_error(request, route)
        if self.fake._card(request["model"]) is None:
            return request, fault, _not_found(request["model"])
        return request, fault, None

    async def _fault_response(self, fault: Fault | None, model: str) -> Response | None:
        if fault is Fault.SLOW:
            await self.fake.sleep(SLOW_FAULT_S)
        elif fault is Fault.HANG:
            await self.fake.sleep(HANG_FAULT_S)
        elif fault is Fault.HTTP_500:
            return _error(500, _HTTP_500_MESSAGE)
        elif fault is Fault.MODEL_NOT_FOUND:
            return _not_found(model)
        elif fault is Fault.QUEUE_FULL:
            return _error(503, _QUEUE_FULL_MESSAGE)
        return None

    def _capability_error(self, request: Mapping[str, Any], route: str) -> Response | None:
        model = request["model"]
        card = self.fake._card(model)
        if card is None:
            return _not_found(model)
        if "completion" not in card.capabilities:
            return _error(400, f'"{model}" does not support {route}')
        if request.get("tools") and "tools" not in card.capabilities:
            return _error(400, f"{model} does not support tools")
        if _think_enabled(request.get("think")) and "thinking" not in card.capabilities:
            return _error(400, f'"{model}" does not support thinking')
        return None

    async def chat(self, body: Any) -> Response:
        request, fault, error = await self._model_call(body, "chat")
        if error is not None:
            return error
        messages = _messages(request.get("messages"))
        if messages is None:
            return _error(400, "messages must be an array of message objects")
        if not messages:
            message = {"role": "assistant", "content": ""}
            return _json(_load_answer(request["model"], message=message))
        tools = request.get("tools") or []
        reply = answer(
            messages,
            format_=request.get("format"),
            tools=tools,
            think=_think_enabled(request.get("think")),
        )
        return await self._answer(
            _job("chat", request, reply, _prompt_tokens(messages, tools), fault)
        )

    async def generate(self, body: Any) -> Response:
        request, fault, error = await self._model_call(body, "generate")
        if error is not None:
            return error
        prompt = str(request.get("prompt") or "")
        system = str(request.get("system") or "")
        raw = request.get("raw") is True
        if raw and (system or request.get("template") or request.get("context")):
            return _error(400, "raw mode does not support template, system, or context")
        if not prompt:
            return _json(_load_answer(request["model"], response=""))
        reply = rerank_reply(prompt) if raw else None
        if reply is None:
            messages: list[Message] = [("system", system)] if system else []
            messages.append(("user", prompt))
            reply = answer(
                messages,
                format_=request.get("format"),
                think=_think_enabled(request.get("think")),
            )
        job = _job("generate", request, reply, max(count_tokens(system + prompt), 1), fault)
        if not raw:
            job.context = [_token_id(piece) for piece in split_tokens(system + prompt)]
        return await self._answer(job)

    async def _answer(self, job: _Job) -> Response:
        if job.stream:
            return StreamingResponse(self._stream(job), media_type="application/x-ndjson")
        started = time.perf_counter()
        chunks = job.chunks()
        latency = self.fake.latency
        await self.fake.sleep(latency.prefill_s(job.prompt_tokens))
        await self.fake.sleep(sum(latency.decode_s(chunk.tokens) for chunk in chunks))
        if job.fault is Fault.STREAM_ERROR_LINE:
            return _error(500, _STREAM_ERROR_MESSAGE)
        reply = job.reply
        payload = job.payload(reply.content, thinking=reply.thinking, tool_calls=reply.tool_calls)
        final = job.line(payload, done=True)
        final.update(self._done_fields(job, chunks, time.perf_counter() - started))
        if job.logprobs:
            final["logprobs"] = [entry for chunk in chunks for entry in chunk.logprobs or []]
        return _maybe_cut(_dumps(final), job.fault)

    async def _stream(self, job: _Job) -> AsyncIterator[bytes]:
        started = time.perf_counter()
        chunks = job.chunks()
        # Faults that break a stream strike halfway, after at least one chunk.
        break_at = max(1, len(chunks) // 2)
        await self.fake.sleep(self.fake.latency.prefill_s(job.prompt_tokens))
        for index, chunk in enumerate([*chunks, None]):
            if index == break_at and job.fault is Fault.STREAM_CUT:
                raise _StreamCut
            if index == break_at and job.fault is Fault.STREAM_ERROR_LINE:
                yield _dumps({"error": _STREAM_ERROR_MESSAGE}) + b"\n"
                return
            if chunk is None:
                break
            await self.fake.sleep(self.fake.latency.decode_s(chunk.tokens))
            line = job.line(chunk.payload, done=False)
            if chunk.logprobs is not None:
                line["logprobs"] = chunk.logprobs
            yield _dumps(line) + b"\n"
        final = job.line(job.payload(""), done=True)
        final.update(self._done_fields(job, chunks, time.perf_counter() - started))
        yield _dumps(final) + b"\n"

    def _done_fields(self, job: _Job, chunks: Sequence[_Chunk], elapsed_s: float) -> dict[str, Any]:
        latency = self.fake.latency
        eval_tokens = sum(chunk.tokens for chunk in chunks)
        load_s = latency.fixed_s or _NOMINAL_LOAD_S
        prompt_s = job.prompt_tokens / (latency.prefill_tokens_per_s or _NOMINAL_PREFILL_TPS)
        eval_s = eval_tokens / (latency.decode_tokens_per_s or _NOMINAL_DECODE_TPS)
        fields: dict[str, Any] = {"done_reason": job.done_reason}
        if job.context is not None:
            answer_ids = [_token_id(piece) for piece in split_tokens(job.reply.content)]
            fields["context"] = job.context + answer_ids
        fields["total_duration"] = int(max(elapsed_s, load_s + prompt_s + eval_s) * 1e9)
        fields["load_duration"] = int(load_s * 1e9)
        fields["prompt_eval_count"] = job.prompt_tokens
        fields["prompt_eval_duration"] = int(prompt_s * 1e9)
        if eval_tokens:  # Ollama leaves zero metrics out
            fields["eval_count"] = eval_tokens
            fields["eval_duration"] = int(eval_s * 1e9)
        return fields

    async def embed(self, body: Any) -> Response:
        request, fault, error = await self._model_call(body, None)
        if error is not None:
            return error
        raw_input = request.get("input")
        if isinstance(raw_input, str):
            texts = [raw_input] if raw_input else []
        elif raw_input is None:
            texts = []
        elif isinstance(raw_input, list) and all(isinstance(text, str) for text in raw_input):
            texts = raw_input
        else:
            return _error(400, "invalid input type")
        dimensions = request.get("dimensions") or EMBEDDING_DIM
        if not isinstance(dimensions, int) or not 1 <= dimensions <= EMBEDDING_DIM:
            return _error(400, f"dimensions must be between 1 and {EMBEDDING_DIM}")
        if not texts:
            return _json({"model": request["model"], "embeddings": []})
        started = time.perf_counter()
        latency = self.fake.latency
        tokens = max(sum(count_tokens(text) for text in texts), 1)
        await self.fake.sleep(latency.prefill_s(tokens))
        if fault is Fault.STREAM_ERROR_LINE:
            return _error(500, _STREAM_ERROR_MESSAGE)
        load_s = latency.fixed_s or _NOMINAL_LOAD_S
        prompt_s = tokens / (latency.prefill_tokens_per_s or _NOMINAL_PREFILL_TPS)
        result = {
            "model": request["model"],
            "embeddings": [embed_text(text, dimensions) for text in texts],
            "total_duration": int(max(time.perf_counter() - started, load_s + prompt_s) * 1e9),
            "load_duration": int(load_s * 1e9),
            "prompt_eval_count": tokens,
        }
        return _maybe_cut(_dumps(result), fault)

    async def embeddings(self, body: Any) -> Response:
        request, fault, error = await self._model_call(body, None)
        if error is not None:
            return error
        prompt = str(request.get("prompt") or "")
        await self.fake.sleep(self.fake.latency.prefill_s(count_tokens(prompt)))
        if fault is Fault.STREAM_ERROR_LINE:
            return _error(500, _STREAM_ERROR_MESSAGE)
        return _maybe_cut(_dumps({"embedding": embed_text(prompt) if prompt else []}), fault)


def _load_answer(model: str, **payload: Any) -> dict[str, Any]:
    """What Ollama answers when there is nothing to generate: it only loads the model."""
    return {
        "model": model,
        "created_at": _timestamp(),
        **payload,
        "done": True,
        "done_reason": "load",
    }


def _maybe_cut(body: bytes, fault: Fault | None) -> Response:
    """A JSON answer, or, under STREAM_CUT, half of it and then a dropped connection."""
    if fault is not Fault.STREAM_CUT:
        return Response(body, media_type="application/json; charset=utf-8")

    async def half_then_cut() -> AsyncIterator[bytes]:
        yield body[: len(body) // 2]
        raise _StreamCut

    return StreamingResponse(half_then_cut(), media_type="application/json; charset=utf-8")


def create_app(fake: FakeOllama) -> Starlette:
    """The ASGI app serving ``fake``: every request is recorded, then routed as Ollama does."""
    api = _Api(fake)

    async def dispatch(request: Request) -> Response:
        body = await json_body(request)
        path = request.url.path
        fake._record(request.method, path, None if body is NOT_JSON else body)
        handler = api.routes.get((request.method, path))
        if handler is None:
            return PlainTextResponse("404 page not found", 404)
        return await handler(body)

    return catch_all(dispatch)


def main() -> None:
    """Run a fake Ollama in the foreground, for trying the product by hand."""
    parser = command_line("python -m evals.fakes.ollama", "Run a fake Ollama server.", 11434)
    parser.add_argument(
        "--model",
        action="append",
        dest="models",
        help=f"a model to serve; repeat for more (default: {', '.join(DEFAULT_MODELS)})",
    )
    parser.add_argument("--fixed-latency", type=float, default=0.0, metavar="SECONDS")
    parser.add_argument("--prefill-tps", type=float, help="prompt tokens per second")
    parser.add_argument("--decode-tps", type=float, help="generated tokens per second")
    args = parser.parse_args()
    latency = LatencyModel(args.fixed_latency, args.prefill_tps, args.decode_tps)
    fake = FakeOllama(models=args.models or DEFAULT_MODELS, latency=latency, port=args.port)
    _hide_stream_cuts_in_logs()
    serve_forever(create_app(fake), args.host, args.port)


if __name__ == "__main__":
    main()
