import logging
import os
import random
from pathlib import Path

import pytest

from agent.policy.safety import Hit, SafetyFilter, SensitiveWords, fold


def write_lists(folder: Path, **lists: str) -> Path:
    folder.mkdir(exist_ok=True)
    for name, text in lists.items():
        (folder / f"{name}.txt").write_text(text, encoding="utf-8")
    return folder


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_lists_are_categories_and_comments_and_blanks_are_skipped(tmp_path: Path):
    folder = write_lists(
        tmp_path / "words",
        politics="# 政治类\n\n敏感词\n  另一个  \n",
        ads="加微信\n#不是词\n",
    )
    (folder / "notes.md").write_text("不读\n", encoding="utf-8")
    words = SensitiveWords.from_dir(folder)

    assert words.categories == ("ads", "politics")
    assert len(words) == 3
    assert words.scan("请加微信，这是敏感词，还有另一个。不读 不是词") == [
        Hit("加微信", "ads", 1, 4),
        Hit("敏感词", "politics", 7, 10),
        Hit("另一个", "politics", 13, 16),
    ]


def test_case_width_and_compatibility_forms_match_with_original_spans():
    words = SensitiveWords({"ads": ["VX号", "qq群", "café", "①号"]})
    text = "加ｖｘ号、ＱＱ群、Vx号和 CAFE\u0301 还有1号"

    hits = words.scan(text)

    assert [(hit.word, text[hit.start : hit.end]) for hit in hits] == [
        ("VX号", "ｖｘ号"),
        ("qq群", "ＱＱ群"),
        ("VX号", "Vx号"),
        ("café", "CAFE\u0301"),
        ("①号", "1号"),
    ]


def test_spans_stay_right_after_characters_that_fold_to_several():
    words = SensitiveWords({"ads": ["株式会社", "fine"]})
    text = "㈱ ﬁne 株式会社"

    hits = words.scan(text)

    # ㈱ folds to "(株)", ﬁ to "fi": the spans still index the text as written.
    assert [(text[hit.start : hit.end], hit.word) for hit in hits] == [
        ("ﬁne", "fine"),
        ("株式会社", "株式会社"),
    ]


def test_invisible_characters_inside_a_word_do_not_hide_it():
    words = SensitiveWords({"ads": ["敏感词", "加微信"]})
    # Zero-width space, word joiner, left-to-right isolate and a variation selector.
    text = "这是敏\u200b感词，\u200b加\u2060微\u2066信\ufe0f。"

    hits = words.scan(text)

    assert [(hit.word, text[hit.start : hit.end]) for hit in hits] == [
        ("敏感词", "敏\u200b感词"),
        ("加微信", "加\u2060微\u2066信"),
    ]
    # The whole span as written is starred, invisible characters inside it too; those
    # around a word are no part of it.
    assert words.mask(text)[0] == "这是****，\u200b*****\ufe0f。"


def test_a_listed_word_with_an_invisible_character_matches_the_plain_word():
    words = SensitiveWords({"ads": ["加\u200b微信"]})
    assert words.scan("请加微信") == [Hit("加\u200b微信", "ads", 1, 4)]


def test_spans_stay_right_when_dropped_and_expanded_characters_even_out():
    words = SensitiveWords({"ads": ["加微信"]})
    # ㈱ folds to three characters and each zero-width space to none: the folded text is as
    # long as the original, yet not one-to-one with it.
    text = "㈱加微信\u200b\u200b"
    assert words.scan(text) == [Hit("加微信", "ads", 1, 4)]


def test_lone_surrogates_do_not_break_a_scan():
    words = SensitiveWords({"ads": ["加微信"]})
    text = "\ud800加微信\udfff"
    assert words.mask(text) == ("\ud800***\udfff", [Hit("加微信", "ads", 1, 4)])


def test_masking_keeps_the_longest_of_nested_hits_and_covers_partial_overlaps():
    words = SensitiveWords({"a": ["微信", "加微信号"], "b": ["ABC", "CDE"], "c": ["微信"]})

    masked, hits = words.mask("请加微信号，或abcde。")

    assert masked == "请****，或*****。"
    assert hits == [
        Hit("加微信号", "a", 1, 5),
        Hit("ABC", "b", 7, 10),
        Hit("CDE", "b", 9, 12),
    ]
    assert words.mask("只说微信") == ("只说**", [Hit("微信", "a", 2, 4), Hit("微信", "c", 2, 4)])
    assert words.mask("干净的话") == ("干净的话", [])


def test_masking_keeps_the_original_length_of_folded_characters():
    words = SensitiveWords({"a": ["fine"]})
    assert words.mask("so ﬁne!") == ("so ***!", [Hit("fine", "a", 3, 6)])


def test_an_empty_list_finds_nothing():
    assert SensitiveWords({}).scan("任何话") == []
    assert SensitiveWords({"a": ["", "  "]}).mask("任何话") == ("任何话", [])


def test_filter_reloads_a_changed_file_after_the_interval(tmp_path: Path):
    folder = write_lists(tmp_path / "words", ads="加微信\n")
    clock = Clock()
    safety = SafetyFilter(folder, check_interval=5, clock=clock)
    assert [hit.word for hit in safety.scan("加微信 买号")] == ["加微信"]

    (folder / "ads.txt").write_text("买号\n", encoding="utf-8")
    os.utime(folder / "ads.txt", ns=(1, 1))
    clock.now += 4
    assert [hit.word for hit in safety.scan("加微信 买号")] == ["加微信"]
    clock.now += 1
    assert [hit.word for hit in safety.scan("加微信 买号")] == ["买号"]

    write_lists(folder, politics="敏感词\n")
    clock.now += 5
    assert safety.words.categories == ("ads", "politics")


def test_forced_reload_reads_even_an_unchanged_signature(tmp_path: Path):
    folder = write_lists(tmp_path / "words", ads="加微信\n")
    stat = (folder / "ads.txt").stat()
    safety = SafetyFilter(folder, check_interval=3600, clock=Clock())

    # Same size and mtime: only a forced reload can notice.
    (folder / "ads.txt").write_text("买号买\n", encoding="utf-8")
    os.utime(folder / "ads.txt", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert safety.scan("买号买") == []
    assert safety.reload()
    assert safety.scan("买号买") == [Hit("买号买", "ads", 0, 3)]


def test_a_bad_file_keeps_the_previous_words(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    folder = write_lists(tmp_path / "words", ads="加微信\n")
    clock = Clock()
    safety = SafetyFilter(folder, check_interval=1, clock=clock)

    (folder / "broken.txt").write_bytes(b"\xff\xfe\xfa not utf-8")
    clock.now += 1
    with caplog.at_level(logging.ERROR):
        assert safety.scan("加微信") == [Hit("加微信", "ads", 0, 3)]
        clock.now += 1
        safety.scan("加微信")
    assert len(caplog.records) == 1
    assert "broken.txt" in caplog.text or "utf-8" in caplog.text
    assert not safety.reload()


def test_a_missing_folder_filters_nothing_and_is_picked_up_later(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    clock = Clock()
    with caplog.at_level(logging.WARNING):
        safety = SafetyFilter(tmp_path / "absent", check_interval=1, clock=clock)
        clock.now += 1
        assert safety.scan("加微信") == []
        clock.now += 1
        assert safety.mask("加微信") == ("加微信", [])
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    # No built-in list exists: the log says nothing is filtered rather than promise a default.
    assert "no word is filtered" in caplog.records[0].getMessage()
    assert "built-in default" not in caplog.records[0].getMessage()

    write_lists(tmp_path / "absent", ads="加微信\n")
    clock.now += 1
    assert safety.scan("加微信") == [Hit("加微信", "ads", 0, 3)]


def test_a_file_where_the_folder_should_be_filters_nothing(tmp_path: Path):
    (tmp_path / "words").write_text("加微信\n", encoding="utf-8")
    safety = SafetyFilter(tmp_path / "words")
    assert safety.scan("加微信") == []
    assert not safety.reload()
    with pytest.raises(NotADirectoryError):
        SensitiveWords.from_dir(tmp_path / "words")


def test_scan_agrees_with_a_naive_search():
    rng = random.Random(7)
    alphabet = "敏感词加微信ａｂＡＢab１1，,"
    words = sorted({"".join(rng.choices(alphabet, k=rng.randint(1, 3))) for _ in range(40)})
    automaton = SensitiveWords({"x": words})
    keys = {fold(word) for word in words}
    for _ in range(200):
        text = "".join(rng.choices(alphabet, k=30))
        folded = fold(text)
        # Every character of this alphabet folds to one, so folded offsets are text offsets.
        expected = {
            (start, start + len(key), key)
            for key in keys
            for start in range(len(folded))
            if folded.startswith(key, start)
        }
        found = {(hit.start, hit.end, fold(hit.word)) for hit in automaton.scan(text)}
        assert found == expected
