from tools.text import (
    char_ngrams,
    citation_numbers,
    content_tokens,
    coverage,
    encodable,
    has_lone_surrogate,
    split_sentences,
    strip_citations,
    support_score,
)


def test_content_tokens_drop_interrogatives():
    assert content_tokens("广三铁路在哪年建成？") == ["广三", "铁路", "年", "建成"]
    assert content_tokens("什么是吗？") == []


def test_split_sentences_keeps_end_punctuation():
    assert split_sentences("第一句。第二句！Third? 末尾[1]。\n新行") == [
        "第一句。",
        "第二句！",
        "Third?",
        "末尾[1]。",
        "新行",
    ]


def test_citation_helpers():
    assert citation_numbers("甲[1]乙[12][3]") == [1, 12, 3]
    assert strip_citations("甲[1]乙[12]") == "甲乙"


def test_overlap_measures():
    assert coverage([], ["a"]) == 0.0
    assert coverage(["a", "b"], ["b", "c"]) == 0.5
    assert char_ngrams("ab") == {"ab"}
    assert char_ngrams("") == set()
    assert support_score("默认监听 8000 端口", "服务默认监听 8000 端口。") == 1.0
    assert support_score("服务监听 8000 端口", "默认监听 8000 端口。") == 0.75
    assert support_score("完全无关的句子", "服务监听 8000 端口") == 0.0


def test_encodable_replaces_only_unpaired_surrogates():
    assert encodable("a\ud800b\udfff") == "a\ufffdb\ufffd"
    assert encodable("😀 表情与中文") == "😀 表情与中文"
    assert has_lone_surrogate("x\udc00") and not has_lone_surrogate("😀")
