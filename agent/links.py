"""Links in what leaves the service: hidden unless their host is on an allow-list.

A passage planted in the knowledge base can carry a phishing link or a download command that
the answer model repeats faithfully, so the citation check passes it; masking at the exit
stops it whatever the platform. What counts as a link:

- `http://`, `https://` and `ftp://` URLs;
- `www.` host names, with or without a path;
- other host names followed by a port or a path (`evil.example/x`), unless their last part
  is a common file extension (`config.yaml/config.json`, `node.js/express`).

A host name alone (`Getchu.com`) is a site's name as often as a link, and stays; so do file
names (`config.yaml`, `README.md`), version numbers (`1.2.3`), e-mail addresses and connection
strings of other schemes (`redis://redis:6379/0`). Links to this machine (`localhost`,
`127.0.0.1`, `[::1]`) are always kept. No module of `agent` is imported here:
settings validate their allow-list with `allowed_domain`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection
from urllib.parse import urlsplit

PLACEHOLDER = "[链接已隐藏]"

# Endings that make a word.word a file name even before a slash; some are top-level domains
# too (md, sh, zip…), but answers name files far more often than hosts under them.
FILE_EXTENSIONS = frozenset(
    "md txt rst py pyc ipynb yaml yml json jsonl toml ini cfg conf env lock log sh bash ps1 bat "
    "js mjs ts tsx jsx vue css scss html htm xml csv tsv sql db sqlite png jpg jpeg gif svg webp "
    "ico bmp pdf doc docx xls xlsx ppt pptx zip gz tgz tar bz2 xz rar exe dll so apk ipa dmg "
    "whl iso img bin mp3 mp4 mov avi mkv wav rs go java kt c h cpp hpp cc cs php rb pl lua ai "
    "psd".split()
)

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOST = re.compile(rf"{_LABEL}(?:\.{_LABEL})*", re.IGNORECASE)
# What a URL may hold, ASCII only: a link written into Chinese text ends where the Chinese
# starts, brackets end it so that a citation mark like "[1]" after it stays, and a backslash
# ends it so that "https://evil.example\@docs.example.com" (browsers read the backslash as a
# slash) is judged by evil.example.
_URL_CHARS = r"[A-Za-z0-9\-._~:/?#@!$&()*+,;=%]"
_LINK = re.compile(
    # Not inside a longer host, path or e-mail address.
    r"(?<![A-Za-z0-9@._/-])"
    rf"(?:(?:https?|ftp)://{_URL_CHARS}+"
    rf"|(?P<host>(?:{_LABEL}\.)+(?P<tld>[a-z]{{2,63}}))(?![A-Za-z0-9-])(?P<rest>{_URL_CHARS}*))",
    re.IGNORECASE,
)
_PORT_OR_PATH = re.compile(r":\d|/")
_TRAILING = ".,;:!?"


def allowed_domain(entry: str) -> str:
    """`entry` as an allow-list domain: lower case, without scheme, port, path or a leading
    `*.`; `ValueError` when what remains is no host name."""
    text = entry.strip().lower()
    host = urlsplit(text).hostname if "://" in text else text.split("/", 1)[0].split(":", 1)[0]
    host = (host or "").removeprefix("*.").strip(".")
    if not _HOST.fullmatch(host):
        raise ValueError(f"“{entry}”不是域名（要写成 docs.example.com 这样）")
    return host


def _trimmed(link: str) -> str:
    # Sentence punctuation after a link is no part of it, nor is a closing parenthesis
    # that opened before it.
    while link and (
        link[-1] in _TRAILING or (link[-1] == ")" and link.count(")") > link.count("("))
    ):
        link = link[:-1]
    return link


def _host(link: str) -> str:
    # urlsplit skips user info: "https://docs.example.com@evil.example/" is evil.example's.
    try:
        return urlsplit(link if "://" in link else f"http://{link}").hostname or ""
    except ValueError:  # an unparsable port
        return ""


def _is_link(host: str, tld: str, rest: str) -> bool:
    """Whether a host name written without a scheme is meant as a link."""
    if host.startswith("www."):
        return True
    return tld not in FILE_EXTENSIONS and _PORT_OR_PATH.match(rest) is not None


def _allows(host: str, allowed: Collection[str]) -> bool:
    host = host.rstrip(".").lower()
    if _loopback(host):
        return True
    labels = host.split(".")
    return any(".".join(labels[i:]) in allowed for i in range(len(labels)))


def _loopback(host: str) -> bool:
    """A link to the reader's own machine (`http://127.0.0.1:8000`, as a guide writes it)
    leads nobody elsewhere: always kept."""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def mask_links(text: str, allowed: Collection[str] = ()) -> str:
    """`text` with each link replaced by `PLACEHOLDER`, unless its host is in `allowed` or
    under a domain in it (`docs.example.com` is allowed by `example.com`). `allowed` holds
    domains as `allowed_domain` writes them."""

    def replace(match: re.Match[str]) -> str:
        whole = match.group(0)
        if match.group("host") is not None and not _is_link(
            match.group("host").lower(), match.group("tld").lower(), match.group("rest")
        ):
            return whole
        link = _trimmed(whole)
        if _allows(_host(link), allowed):
            return whole
        return PLACEHOLDER + whole[len(link) :]

    return _LINK.sub(replace, text)
