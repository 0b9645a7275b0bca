import pytest

from agent.citations import check_citations, renumber
from tools.base import Passage


def passage(pid: str, title: str, text: str) -> Passage:
    return Passage(id=pid, title=title, source=f"docs/{pid}.md", text=text, score=1.0, kb="t")


EVIDENCE = [
    passage(
        "port",
        "安装 › 默认端口",
        "服务启动后默认监听 127.0.0.1 的 8000 端口。可以用 QQRAG_PORT 修改端口。",
    ),
    passage(
        "ollama",
        "安装 › 连接 Ollama",
        "先运行 ollama pull qwen3:8b 下载模型。Ollama 默认地址是 http://127.0.0.1:11434。",
    ),
]


def test_supported_citations_are_kept_and_verdict_is_complete():
    draft = "服务默认监听 8000 端口[1]。使用前先运行 ollama pull qwen3:8b 下载模型[2]。"
    check = check_citations(draft, EVIDENCE, threshold=0.5)
    assert check.problems == []
    assert check.text == draft
    assert check.verdict["supported_ratio"] == 1.0
    assert check.verdict["removed"] == []
    assert [s["status"] for s in check.verdict["sentences"]] == ["supported", "supported"]


def test_unsupported_claim_is_removed_and_named():
    draft = "服务默认监听 8000 端口[1]。服务还自带图形化管理后台和计费系统[2]。"
    check = check_citations(draft, EVIDENCE, threshold=0.5)
    assert check.text == "服务默认监听 8000 端口[1]。"
    assert check.verdict["removed"] == [
        {
            "text": "服务还自带图形化管理后台和计费系统。",
            "reason": "所引 [2] 的支持度 0.00，其他资料也不支持（最高支持度 0.12，要求 0.5）",
        }
    ]
    assert check.verdict["supported_ratio"] == 0.5
    assert check.needs_retry
    assert "图形化管理后台" in check.problems[0]


@pytest.mark.parametrize(
    ("sentence", "reason"),
    [
        ("服务还自带图形化管理后台和计费系统[7]。", "引用了不存在的编号 [7]，也没有资料支持它"),
        ("服务还自带图形化管理后台和计费系统。", "没有标注出处，也没有资料支持它"),
    ],
)
def test_a_removed_sentence_says_why(sentence: str, reason: str):
    (removed,) = check_citations(sentence, EVIDENCE, threshold=0.5).verdict["removed"]
    assert removed == {
        "text": "服务还自带图形化管理后台和计费系统。",
        "reason": f"{reason}（最高支持度 0.12，要求 0.5）",
    }


def test_marker_pointing_at_no_passage_is_an_invalid_ref():
    draft = "服务默认监听 8000 端口[7]。"
    check = check_citations(draft, EVIDENCE, threshold=0.5)
    assert check.verdict["invalid_refs"] == [7]
    # The sentence itself is supported by passage 1, so it is credited there.
    assert check.text == "服务默认监听 8000 端口[1]。"
    assert check.verdict["sentences"][0]["status"] == "repaired"
    assert check.problems == ["引用了不存在的编号：[7]。"]


def test_wrong_number_is_repaired_to_the_supporting_passage():
    check = check_citations("Ollama 默认地址是 http://127.0.0.1:11434[1]。", EVIDENCE, 0.5)
    assert check.text == "Ollama 默认地址是 http://127.0.0.1:11434[2]。"
    assert check.problems == []


def test_uncited_connective_sentence_stays_but_an_uncited_claim_goes():
    draft = "步骤如下：先运行 ollama pull qwen3:8b 下载模型[2]。此外服务支持自动扩容到一百台机器。"
    check = check_citations(draft, EVIDENCE, threshold=0.5)
    assert check.text == "步骤如下：先运行 ollama pull qwen3:8b 下载模型[2]。"
    assert [s["status"] for s in check.verdict["sentences"]] == ["supported", "unsupported"]


def test_refusal_needs_no_citation():
    check = check_citations("知识库里没有找到收费标准的相关内容。", EVIDENCE, threshold=0.5)
    assert check.problems == []
    assert check.verdict["refusal"] is True
    assert check.verdict["supported_ratio"] is None


def test_answer_without_any_citation_asks_for_a_retry():
    check = check_citations("好的。", EVIDENCE, threshold=0.5)
    assert check.problems == ["回答没有标注任何出处。"]


def test_renumber_orders_by_first_appearance_and_lists_sources():
    text, citations = renumber(
        "Ollama 地址是 11434[2]。默认端口 8000[1]。再说一次 11434[2]。", EVIDENCE
    )
    assert text == "Ollama 地址是 11434[1]。默认端口 8000[2]。再说一次 11434[1]。"
    assert [(c["index"], c["passage_id"]) for c in citations] == [(1, "ollama"), (2, "port")]
    assert citations[0]["snippet"] == "Ollama 默认地址是 http://127.0.0.1:11434。"
    assert citations[1]["source"] == "docs/port.md"
