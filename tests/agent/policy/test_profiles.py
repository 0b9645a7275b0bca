import logging
import os
from pathlib import Path

import pytest

from agent.context import Context
from agent.policy.profiles import (
    Assignment,
    GrayRelease,
    ProfileBook,
    ProfileError,
    bucket,
)

BOOK = """
profiles:
  stable: {}
  big:
    chat_model: qwen3:14b
    thinking: true
    relevance_threshold: 0.4
  faq:
    knowledge_bases: [default, faq]
    prompt_variant: short
  canary:
    reranker: embedding
rules:
  - {profile: big, tenant: acme, group_ids: [10001, "10002"]}
  - {profile: faq, user_ids: ["42"]}
  - {profile: big, tenant: acme}
  - {profile: canary, percent: 10}
default: stable
"""


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def profile_of(book: ProfileBook, tenant: str, group: str | None, user: str) -> str:
    return book.assign(tenant, group, user).profile


def test_first_matching_rule_wins():
    book = ProfileBook.parse(BOOK)

    # Group rule, before the user rule even for user 42.
    assert profile_of(book, "acme", "10001", "42") == "big"
    assert profile_of(book, "acme", "10002", "7") == "big"
    assert profile_of(book, "other", "10001", "42") == "faq"
    assert profile_of(book, "other", None, "42") == "faq"
    # Tenant-wide rule after the user rule.
    assert profile_of(book, "acme", "99999", "7") == "big"
    assert profile_of(book, "acme", None, "42") == "faq"


def test_assignment_carries_overrides_and_knowledge_bases():
    book = ProfileBook.parse(BOOK)

    assert book.assign("acme", "10001", "1") == Assignment(
        "big", {"chat_model": "qwen3:14b", "thinking": True, "relevance_threshold": 0.4}, None
    )
    faq = book.assign("x", None, "42")
    assert faq == Assignment("faq", {"prompt_variant": "short"}, ["default", "faq"])

    base = Context(chat_model="qwen3:8b", thinking=False, top_k=5)
    applied = book.assign("acme", None, "1").apply(base)
    assert (applied.chat_model, applied.thinking, applied.relevance_threshold, applied.top_k) == (
        "qwen3:14b",
        True,
        0.4,
        5,
    )
    assert base.chat_model == "qwen3:8b"


def test_percentage_is_stable_and_close_to_its_share():
    first, second = ProfileBook.parse(BOOK), ProfileBook.parse(BOOK)
    users = [str(100000 + i) for i in range(10_000)]

    chosen = [profile_of(first, "t", None, user) for user in users]

    assert chosen == [profile_of(second, "t", None, user) for user in users]
    assert abs(chosen.count("canary") / len(users) - 0.10) <= 0.02
    assert set(chosen) == {"canary", "stable"}
    # Pinned values: another process, or the next release, must put users where they were.
    assert [bucket("t", user, "canary") for user in ("1", "2", "3", "100000")] == [37, 31, 93, 89]


def test_the_bucket_is_salted_by_profile_and_spans_0_to_99():
    buckets = {bucket("t", str(i), "a") for i in range(5000)}
    assert buckets == set(range(100))
    same = sum(bucket("t", str(i), "a") == bucket("t", str(i), "b") for i in range(5000))
    assert same < 200


def test_a_missing_file_is_one_default_profile(tmp_path: Path):
    book = ProfileBook.load(tmp_path / "absent.yaml")
    assert list(book.profiles) == ["default"]
    assert book.assign("t", "g", "u") == Assignment("default", {}, None)
    assert GrayRelease(tmp_path / "absent.yaml").assign("t", None, "u").profile == "default"
    assert ProfileBook.parse("").assign("t", None, "u").profile == "default"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "profiles: {a: {chat_modle: x}}",
            "profiles.a: unknown key 'chat_modle'; allowed: chat_model",
        ),
        ("rules: [{profile: default, groups: [1]}]", "rules[0]: unknown key 'groups'"),
        ("profile: {}", "the top level: unknown key 'profile'"),
        (
            "profiles: {a: {thinking: 'yes'}}",
            "profiles.a.thinking: Input should be a valid boolean",
        ),
        ("profiles: {a: {reranker: bm25}}", "profiles.a.reranker: Input should be 'lexical'"),
        ("profiles: {a: {top_k: 2.5}}", "profiles.a.top_k"),
        ("profiles: {a: {knowledge_bases: []}}", "profiles.a.knowledge_bases: give at least one"),
        ("rules: [{profile: nope}]", "rules[0].profile: no profile named 'nope'"),
        ("rules: [{profile: default, percent: 150}]", "rules[0].percent: expected 0..100"),
        ("rules: [{profile: default, user_ids: 42}]", "rules[0].user_ids: expected a list"),
        ("default: nope", "default: no profile named 'nope'"),
        ("profiles: [a, b]", "profiles: expected a mapping"),
        ("profiles: {a: [b", "not valid YAML"),
    ],
)
def test_bad_files_say_which_key_and_which_file(tmp_path: Path, text: str, message: str):
    path = tmp_path / "profiles.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ProfileError) as error:
        ProfileBook.load(path)
    assert str(error.value).startswith(f"{path}: ")
    assert message in str(error.value)


def test_reload_picks_up_edits_and_keeps_the_last_good_book(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    path = tmp_path / "profiles.yaml"
    path.write_text("profiles: {a: {top_k: 3}}\ndefault: a\n", encoding="utf-8")
    clock = Clock()
    gray = GrayRelease(path, check_interval=5, clock=clock)
    assert gray.assign("t", None, "u") == Assignment("a", {"top_k": 3}, None)

    path.write_text("profiles: {a: {top_k: 4}}\ndefault: a\n", encoding="utf-8")
    os.utime(path, ns=(1, 1))
    clock.now += 5
    assert gray.assign("t", None, "u").context_overrides == {"top_k": 4}

    path.write_text("profiles: {a: {top_kk: 5}}\ndefault: a\n", encoding="utf-8")
    os.utime(path, ns=(2, 2))
    clock.now += 5
    with caplog.at_level(logging.ERROR):
        assert gray.assign("t", None, "u").context_overrides == {"top_k": 4}
    assert "unknown key 'top_kk'" in caplog.text
    assert not gray.reload()
    assert gray.book.default == "a"

    path.unlink()
    clock.now += 5
    assert gray.assign("t", None, "u") == Assignment("default", {}, None)


def test_a_bad_file_at_start_serves_the_builtin_default(tmp_path: Path):
    path = tmp_path / "profiles.yaml"
    path.write_text("default: nope\n", encoding="utf-8")
    gray = GrayRelease(path, clock=Clock())
    assert gray.assign("t", None, "u").profile == "default"

    path.write_text("profiles: {b: {}}\ndefault: b\n", encoding="utf-8")
    assert gray.reload()
    assert gray.assign("t", None, "u").profile == "b"
