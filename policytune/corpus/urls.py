"""URLs of the scraper: page file names, normalisation, hosts and crawl domains, links,
the redaction of credentials out of every URL and message that is recorded, and whether an
address is public (the redirect guard against SSRF).

Redaction: a URL is requested as given (``user:password@`` and ``?token=`` included) but
recorded by ``redact_url``: without its userinfo and without the query pairs whose key is a
secret (``DEFAULT_SECRET_QUERY_KEYS``, params ``scrape.secret_query_keys``). ``scrub``
removes those secrets from free text (error messages, which quote the URL).

Addresses: ``address_kind`` says why an IP address is not public (loopback, link-local,
private, multicast, unspecified, reserved, not globally routable), looking through IPv4
addresses embedded in IPv6 ones (``::ffff:10.0.0.1``, 6to4, NAT64); ``host_addresses``
resolves a host (IP literals in any form ``getaddrinfo`` accepts, e.g. ``2130706433`` or
``0177.0.0.1``, or a name) to its addresses.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import socket
from pathlib import Path
from typing import Callable, Iterable
from urllib.parse import quote, quote_plus, unquote, unquote_plus, urljoin, urlsplit, urlunsplit

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


# --------------------------------------------------------------------------- redaction

DEFAULT_SECRET_QUERY_KEYS = (
    "token", "access_token", "api_key", "apikey", "key", "sig", "signature", "secret",
    "password", "passwd", "auth", "x-amz-signature", "x-amz-credential",
    "x-amz-security-token", "x-goog-signature", "code")
REDACTED = "[redacted]"
_MIN_SCRUB = 4  # shorter secret values are removed only where they stand as key=value / userinfo


def _query_key(pair: str) -> str:
    return unquote_plus(pair.split("=", 1)[0]).strip().lower()


def redact_url(url: str, secret_keys: Iterable[str] = DEFAULT_SECRET_QUERY_KEYS) -> str:
    """``url`` without ``user:password@`` and without the query pairs whose key is one of
    ``secret_keys`` (case-insensitive); other pairs keep their order and spelling. A URL with
    nothing to remove is returned unchanged."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return scrub(url, (), secret_keys)
    netloc = parts.netloc.rpartition("@")[2]
    keys = {k.lower() for k in secret_keys}
    query = parts.query
    if query:
        query = "&".join(p for p in query.split("&") if _query_key(p) not in keys)
    if netloc == parts.netloc and query == parts.query:
        return url
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def url_secrets(url: str, secret_keys: Iterable[str] = DEFAULT_SECRET_QUERY_KEYS) -> set[str]:
    """The secret values of ``url``: its userinfo password (and user name) and the values of
    its secret query keys, raw and percent-decoded."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return set()
    keys = {k.lower() for k in secret_keys}
    out: set[str] = set()
    userinfo = parts.netloc.rpartition("@")[0] if "@" in parts.netloc else ""
    if userinfo:
        user, _, password = userinfo.partition(":")
        out.update((user, password, unquote(user), unquote(password)))
    for pair in parts.query.split("&"):
        if "=" in pair and _query_key(pair) in keys:
            value = pair.split("=", 1)[1]
            out.update((value, unquote_plus(value)))
    return {v for v in out if v}


def scrub(text: str | None, secrets: Iterable[str] = (),
          secret_keys: Iterable[str] = DEFAULT_SECRET_QUERY_KEYS) -> str | None:
    """``text`` with credentials removed: the userinfo of any URL in it, the values of secret
    query keys (``?token=...``, ``&sig=...``), and every occurrence of the ``secrets`` given
    (at least 4 characters long; also percent-encoded)."""
    if not text:
        return text
    text = _USERINFO_IN_TEXT.sub("://", text)
    keys = sorted({k.lower() for k in secret_keys}, key=len, reverse=True)
    if keys:
        pattern = _key_pattern(tuple(keys))
        text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
    forms: set[str] = set()
    for value in secrets:
        if value and len(value) >= _MIN_SCRUB:
            forms.update((value, quote(value, safe=""), quote_plus(value), quote(value)))
    for form in sorted(forms, key=len, reverse=True):
        text = text.replace(form, REDACTED)
    return text


_USERINFO_IN_TEXT = re.compile(r"://[^/\s@'\"<>?#]{0,256}@")
_KEY_PATTERNS: dict[tuple[str, ...], re.Pattern] = {}


def _key_pattern(keys: tuple[str, ...]) -> re.Pattern:
    if keys not in _KEY_PATTERNS:
        alternatives = "|".join(re.escape(k) for k in keys)
        _KEY_PATTERNS[keys] = re.compile(
            rf"""([?&;](?:{alternatives})=)[^&\s'"<>#)]{{0,4096}}""", re.I)
    return _KEY_PATTERNS[keys]


# --------------------------------------------------------------------------- public addresses

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[..., list]
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def address_kind(ip: IPAddress) -> str | None:
    """None if ``ip`` is a public (globally routable unicast) address; else what it is:
    ``unspecified``, ``loopback``, ``link-local``, ``multicast``, ``private``, ``reserved`` or
    ``not globally routable`` (e.g. 100.64.0.0/10, fec0::/10). An IPv4 address embedded in
    an IPv6 one (IPv4-mapped, 6to4, NAT64) is judged as itself."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            kind = address_kind(embedded)
            return f"{kind} ({embedded} inside {ip})" if kind else None
    for kind, flag in (("unspecified", ip.is_unspecified), ("loopback", ip.is_loopback),
                       ("link-local", ip.is_link_local), ("multicast", ip.is_multicast),
                       ("private", ip.is_private), ("reserved", ip.is_reserved)):
        if flag:
            return kind
    if not ip.is_global or (isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local):
        return "not globally routable"
    return None


def host_addresses(host: str, resolve: Resolver = socket.getaddrinfo) -> list[IPAddress]:
    """The IP addresses of ``host``: itself if it is an IP literal, else what ``resolve``
    (``socket.getaddrinfo``, which also reads numeric forms like ``2130706433``) returns;
    [] when it does not resolve."""
    host = host.strip("[]")
    if not host:
        return []
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = resolve(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError, ValueError):
        return []
    out: list[IPAddress] = []
    for info in infos:
        try:
            ip = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        except (ValueError, IndexError, TypeError):
            continue
        if ip not in out:
            out.append(ip)
    return out
