"""URLs of the scraper: page file names, normalisation, hosts and crawl domains, links."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Iterable
from urllib.parse import unquote, urljoin, urlsplit, urlunsplit

import requests
from bs4 import BeautifulSoup

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_filename(url: str, suffix: str = ".html", max_len: int = 80) -> str:
    """A file name for ``url`` that can never leave the folder it is joined to.

    Readable part: the URL without scheme, percent-decoded, every run of characters outside
    ``[A-Za-z0-9._-]`` turned into ``_``, no ``..``, no leading dot, at most ``max_len``
    characters (the end of the URL is kept: it names the page). A 12-hex-digit hash of the
    whole URL keeps distinct URLs apart, e.g. ``127.0.0.1_8000_hr_leave-1a2b3c4d5e6f.html``.
    """
    digest = hashlib.sha256(url.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    text = re.sub(r"^[A-Za-z][A-Za-z0-9+.-]*:(//)?", "", url)  # scheme
    text = unquote(text, errors="replace")
    text = re.sub(r"\.(x?html?)$", "", text, flags=re.IGNORECASE)
    slug = _UNSAFE.sub("_", text)
    slug = re.sub(r"\.{2,}", ".", slug)  # never '..'
    slug = slug[-max_len:].strip("._-") or "page"
    return f"{slug}-{digest}{suffix}"


def normalize_url(url: str) -> str:
    """Lower-case scheme and host, drop the default port and the fragment, '' path -> '/'."""
    parts = urlsplit(requests.utils.requote_uri(url.strip()))
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    if port and not (scheme, port) in (("http", 80), ("https", 443)):
        host = f"{host}:{port}"
    if parts.username or parts.password:
        userinfo = parts.username or ""
        if parts.password:
            userinfo += f":{parts.password}"
        host = f"{userinfo}@{host}"
    return urlunsplit((scheme, host, parts.path or "/", parts.query, ""))


def host_of(url: str) -> str:
    return (urlsplit(url).hostname or "").lower()


def domain_allowed(url: str, domains: Iterable[str]) -> bool:
    host = host_of(url)
    for d in domains:
        d = d.lower().strip().lstrip(".")
        if d and (host == d or host.endswith("." + d)):
            return True
    return False


def extract_links(html: str, base_url: str) -> list[str]:
    """Absolute, normalised http(s) links of <a href> in document order, without duplicates."""
    soup = BeautifulSoup(html, "lxml")
    base = soup.find("base", href=True)
    if base:
        base_url = urljoin(base_url, base["href"].strip())
    out: dict[str, None] = {}
    for a in soup.find_all("a", href=True):
        href = a["href"].strip()
        if not href or href.startswith("#"):
            continue
        try:
            url = urljoin(base_url, href)
            if urlsplit(url).scheme not in ("http", "https"):
                continue
            out.setdefault(normalize_url(url))
        except ValueError:
            continue
    return list(out)


def is_web(source: str) -> bool:
    return re.match(r"(?i)https?://", source.strip()) is not None


def local_url(path: Path, root: Path) -> str:
    """``file:<posix path relative to root>`` (absolute if the file is outside root)."""
    path = path.resolve()
    try:
        return "file:" + path.relative_to(root.resolve()).as_posix()
    except ValueError:
        return "file:" + path.as_posix()
