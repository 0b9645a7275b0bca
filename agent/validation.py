"""What pydantic found wrong with a value, said in Chinese: the service's settings and the
HTTP request bodies are checked by pydantic, whose messages are English."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from pydantic_core import ErrorDetails

_NUMBERS = {"int_parsing", "int_type", "int_from_float", "float_parsing", "float_type"}
_OBJECTS = {"model_type", "model_attributes_type", "dict_type", "mapping_type"}
_REQUEST_PARTS = {"body", "query", "path", "header", "cookie"}
_BOUNDS = {
    "greater_than": ("gt", "要大于 {}"),
    "greater_than_equal": ("ge", "不能小于 {}"),
    "less_than": ("lt", "要小于 {}"),
    "less_than_equal": ("le", "不能大于 {}"),
}


def field_path(loc: Sequence[int | str]) -> str:
    """`messages.0.role` for a request's error location, without the part of the request
    (body, query…) it is in; empty for the request body as a whole."""
    parts = list(loc)
    if parts and parts[0] in _REQUEST_PARTS:
        parts = parts[1:]
    return ".".join(str(part) for part in parts)


def _choices(expected: str) -> str:
    # pydantic lists a Literal's values as "'group' or 'private'" or "'a', 'b' or 'c'".
    quoted = re.findall(r"'([^']*)'", expected)
    return "、".join(quoted) if quoted else expected


def _length(error: ErrorDetails, bound: str) -> Any:
    return (error.get("ctx") or {}).get(bound)


def explain(error: ErrorDetails, name: str) -> str:
    """One problem as a sentence that names `name` (the setting or the request field) and
    says what a good value looks like."""
    kind = error["type"]
    ctx = error.get("ctx") or {}
    # "limit 要是整数", "请求体要是 JSON 对象": a space after a field name only.
    subject = f"{name} " if name else "请求体"
    if kind == "missing":
        return f"缺少 {name}" if name else "缺少请求体（JSON 对象）"
    if kind == "json_invalid":
        position = error["loc"][-1] if error["loc"] else None
        near = f"（第 {position + 1} 个字符附近）" if isinstance(position, int) else ""
        return f"请求体不是合法的 JSON{near}，请检查引号、逗号和括号"
    if kind in _NUMBERS:
        return f"{subject}要是{'整数' if kind.startswith('int') else '数字'}"
    if kind in {"bool_parsing", "bool_type"}:
        return f"{subject}要是 true 或 false"
    if kind == "string_type":
        return f"{subject}要是字符串"
    if kind == "list_type":
        return f"{subject}要是列表"
    if kind in _OBJECTS:
        return f"{subject}要是 JSON 对象"
    if kind in {"literal_error", "enum"}:
        return f"{subject}只能是 {_choices(str(ctx.get('expected', '')))} 之一"
    if kind in _BOUNDS:
        bound, phrase = _BOUNDS[kind]
        return f"{subject}{phrase.format(ctx.get(bound))}"
    if kind in {"string_too_short", "too_short"}:
        least = _length(error, "min_length")
        if least == 1:
            return f"{subject}不能为空"
        unit = "个字符" if isinstance(error.get("input"), str) else "项"
        return f"{subject}至少要有 {least} {unit}"
    if kind in {"string_too_long", "too_long"}:
        unit = "个字符" if isinstance(error.get("input"), str) else "项"
        return f"{subject}最多 {_length(error, 'max_length')} {unit}"
    if kind == "string_pattern_mismatch":
        return f"{subject}的格式不对（要符合 {ctx.get('pattern')}）"
    if kind == "extra_forbidden":
        return f"不认识 {name} 这一项"
    if kind in {"value_error", "assertion_error"}:
        # Our own validators speak Chinese already; pydantic prefixes their messages.
        message = re.sub(r"^(Value|Assertion) error, ", "", error["msg"])
        return message if not name or message.startswith(name) else f"{name}：{message}"
    return f"{subject}的值不对（{error['msg']}）"


def request_problem(error: ErrorDetails) -> dict[str, str]:
    """One problem of a request: the field, pydantic's error type (for programs) and the
    sentence for people."""
    # A JSON syntax error's location is a character position, not a field.
    name = "" if error["type"] == "json_invalid" else field_path(error["loc"])
    return {"field": name, "type": error["type"], "message": explain(error, name)}
