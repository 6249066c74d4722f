"""scrape: policy web pages and local HTML files -> data/raw (UTF-8 pages + manifest).

Reads ``params.yaml`` section ``scrape`` (see ``ScrapeConfig`` for every key).
Writes:
  data/raw/pages/<safe name>.html   every page fetched OK, re-encoded as UTF-8
  data/raw/manifest.jsonl           one row per source or discovered URL, sorted by url
  data/stats/scrape.json            counts: sources, ok, failed, failed_by_reason, bytes, retries

Sources are http(s) URLs or local files/folders (a folder means every *.html / *.htm below
it, sorted; local pages get the url ``file:<path relative to the repository root>``).
Over http(s) the stage is a polite, bounded client: robots.txt (fetched once per host), a
User-Agent naming the project, a delay between requests to one host, timeouts, retries with
exponential backoff on 5xx / 429 / connection errors (``Retry-After`` honoured up to a cap),
a size cap, manually followed redirects with loop detection, and charset detection
(BOM -> HTTP header -> <meta> -> UTF-8 -> charset-normalizer). With ``crawl: true`` it also
follows <a href> links from http(s) sources up to ``max_depth`` within ``allowed_domains``.

Nothing is silently dropped: every failure is a manifest row with a status reason and an
error message, and the counts go to data/stats/scrape.json. The stage exits non-zero (after
writing everything) only when the fraction of OK rows is below ``min_ok_fraction``.
"""

from __future__ import annotations

import argparse
import codecs
import hashlib
import re
import sys
import time
import urllib.robotparser
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Callable, Iterable, Mapping
from urllib.parse import unquote, urljoin, urlsplit, urlunsplit

import requests
from bs4 import BeautifulSoup

from policytune.core import records
from policytune.core.params import ParamsError, load_section
from policytune.core.progress import Progress, get_logger

log = get_logger("scrape")

USER_AGENT = "policytune/0.1 (+https://github.com/policytune/policytune)"
HTML_TYPES = ("text/html", "application/xhtml+xml")
HTML_SUFFIXES = (".html", ".htm", ".xhtml")
REDIRECT_CODES = (301, 302, 303, 307, 308)
ROBOTS_MAX_BYTES = 500 * 1024  # RFC 9309: parse at least the first 500 KiB
OUT_DIR = Path("data/raw")
STATS_FILE = Path("data/stats/scrape.json")


def _help(text: str) -> dict:
    return {"help": text}


@dataclass
class ScrapeConfig:
    sources: list[str] = field(
        default_factory=lambda: ["data/sample_site"],
        metadata=_help("http(s) URLs, local HTML files, or folders (all *.html/*.htm below, sorted)"))
    crawl: bool = field(default=False, metadata=_help(
        "follow <a href> links from http(s) sources (same site, see allowed_domains)"))
    max_depth: int = field(default=1, metadata=_help("crawl depth; sources are depth 0"))
    allowed_domains: list[str] = field(default_factory=list, metadata=_help(
        "hosts the crawl may enter (subdomains included); empty = the hosts of the sources"))
    max_pages: int = field(default=200, metadata=_help(
        "crawl stops discovering new URLs after this many rows (skipped URLs are counted)"))
    timeout_s: float = field(default=10.0, metadata=_help(
        "seconds allowed to connect, for each read, and for a whole response"))
    retries: int = field(default=3, metadata=_help(
        "extra attempts after a 5xx, 429, timeout, connection error or broken body"))
    backoff_s: float = field(default=0.5, metadata=_help(
        "first retry waits this long, doubling each retry (unless Retry-After says otherwise)"))
    max_retry_after_s: float = field(default=30.0, metadata=_help(
        "longest Retry-After / Crawl-delay / backoff honoured; a longer Retry-After is a failure"))
    max_bytes: int = field(default=5_000_000, metadata=_help(
        "largest response body read; larger -> status too_large"))
    max_redirects: int = field(default=5, metadata=_help("redirect hops followed per URL"))
    respect_robots: bool = field(default=True, metadata=_help(
        "fetch robots.txt once per host and skip disallowed URLs (status robots_disallowed)"))
    user_agent: str = field(default=USER_AGENT, metadata=_help(
        "User-Agent header; robots.txt rules are matched on its first token ('policytune')"))
    delay_s: float = field(default=0.5, metadata=_help(
        "minimum seconds between two requests to the same host (robots Crawl-delay wins if larger)"))
    min_ok_fraction: float = field(default=0.5, metadata=_help(
        "the stage fails (after writing the manifest) when ok rows / all rows is below this"))

    def __post_init__(self):
        problems = [f"{name} must be {rule}" for name, ok, rule in (
            ("sources", all(isinstance(x, str) and x.strip() for x in self.sources),
             "a list of non-empty strings"),
            ("allowed_domains", all(isinstance(x, str) for x in self.allowed_domains),
             "a list of host names"),
            ("max_depth", self.max_depth >= 0, ">= 0"),
            ("max_pages", self.max_pages >= 1, ">= 1"),
            ("timeout_s", self.timeout_s > 0, "> 0"),
            ("retries", self.retries >= 0, ">= 0"),
            ("backoff_s", self.backoff_s >= 0, ">= 0"),
            ("max_retry_after_s", self.max_retry_after_s >= 0, ">= 0"),
            ("max_bytes", self.max_bytes >= 1, ">= 1"),
            ("max_redirects", self.max_redirects >= 0, ">= 0"),
            ("delay_s", self.delay_s >= 0, ">= 0"),
            ("user_agent", bool(self.user_agent.strip()), "non-empty"),
            ("min_ok_fraction", 0 <= self.min_ok_fraction <= 1, "between 0 and 1"),
        ) if not ok]
        if problems:
            raise ParamsError("params 'scrape': " + "; ".join(problems))


# --------------------------------------------------------------------------- file names

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


# --------------------------------------------------------------------------- charsets

_META_CHARSET = re.compile(rb"""<meta[^>]*?charset\s*=\s*["']?\s*([A-Za-z0-9_.:\-]+)""", re.I)
_XML_DECL = re.compile(rb"""^<\?xml[^>]*?encoding\s*=\s*["']([A-Za-z0-9_.:\-]+)["']""", re.I)
_BOMS = ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF32_LE, "utf-32-le"),
         (codecs.BOM_UTF32_BE, "utf-32-be"), (codecs.BOM_UTF16_LE, "utf-16-le"),
         (codecs.BOM_UTF16_BE, "utf-16-be"))


def _codec(label: str | None) -> str | None:
    """Python codec name for a declared charset label, with the browser (WHATWG) mapping
    of latin-1/ascii to windows-1252; None when the label is unknown."""
    if not label:
        return None
    try:
        name = codecs.lookup(label.strip().strip("\"'").lower()).name
    except (LookupError, ValueError):
        return None
    return "cp1252" if name in ("iso8859-1", "ascii") else name


def header_charset(headers: Mapping[str, str] | None) -> str | None:
    content_type = _header(headers, "content-type") or ""
    m = re.search(r"charset\s*=\s*[\"']?([^\s;\"']+)", content_type, re.I)
    return m.group(1) if m else None


def _header(headers: Mapping[str, str] | None, name: str) -> str | None:
    for key, value in (headers or {}).items():
        if key.lower() == name:
            return value
    return None


def _try(data: bytes, codec: str | None) -> str | None:
    if not codec:
        return None
    try:
        return data.decode(codec)
    except (UnicodeDecodeError, LookupError):
        return None


def meta_charset(data: bytes) -> str | None:
    """Codec declared by <meta charset>, <meta http-equiv content="...; charset=">, or an
    XML declaration in the first 16 KiB; None if absent or unknown."""
    head = data[:16384]
    m = _META_CHARSET.search(head) or _XML_DECL.search(head)
    codec = _codec(m.group(1).decode("ascii", "replace")) if m else None
    if codec and codec.startswith(("utf-16", "utf-32")):
        codec = "utf-8"  # a byte-oriented <meta> cannot really declare UTF-16 (WHATWG rule)
    return codec


def decode_html(data: bytes, headers: Mapping[str, str] | None = None) -> tuple[str, str]:
    """Decode an HTML body; returns (text, codec name) and never raises.

    Order: byte-order mark, then the HTTP ``Content-Type`` charset, then ``<meta charset>`` /
    ``<meta http-equiv>`` (or an XML declaration), then strict UTF-8, then charset-normalizer,
    then windows-1252 with replacement characters. The BOM comes first as in browsers: a
    BOM is proof, a header is a claim. A declared charset that does not decode cleanly falls
    through to the next step; 'latin-1' and 'ascii' labels mean windows-1252 (browsers do the
    same, and real pages labelled latin-1 use its curly quotes and euro sign).
    """
    text, codec, _ = decode_html_ex(data, headers)
    return text, codec


def decode_html_ex(data: bytes, headers: Mapping[str, str] | None = None) -> tuple[str, str, str]:
    """Like ``decode_html`` but also returns where the encoding came from."""
    for bom, codec in _BOMS:
        if data.startswith(bom):
            text = data[len(bom):].decode(codec, errors="replace")
            return text, codec, "bom"
    candidates = ((_codec(header_charset(headers)), "header"), (meta_charset(data), "meta"),
                  ("utf-8", "utf-8"))
    for codec, source in candidates:
        text = _try(data, codec)
        if text is not None:
            return text, codec, source
    try:
        from charset_normalizer import from_bytes

        best = from_bytes(data).best()
    except Exception:  # a detector failure must not lose the page
        best = None
    if best is not None and best.encoding:
        codec = _codec(best.encoding) or best.encoding
        text = _try(data, codec)
        if text is not None:
            return text, codec, "detected"
    return data.decode("cp1252", errors="replace"), "cp1252", "fallback"


_META_DECL = re.compile(r"""(<meta\b[^>]*?charset\s*=\s*["']?\s*)([A-Za-z0-9_.:\-]+)""", re.I)
_XML_DECL_TEXT = re.compile(r"""^(\s*<\?xml[^>]*?encoding\s*=\s*["'])([A-Za-z0-9_.:\-]+)""", re.I)


def as_utf8_html(text: str) -> str:
    """The page text with its charset declarations rewritten to utf-8 (the saved file is
    UTF-8; a stale windows-1252 <meta> would make the next stage decode it wrongly)."""
    text = _META_DECL.sub(lambda m: m.group(1) + "utf-8", text, count=3)
    return _XML_DECL_TEXT.sub(lambda m: m.group(1) + "utf-8", text, count=1)


# --------------------------------------------------------------------------- URLs

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


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date); None if absent
    or unparseable; 0 for a date in the past."""
    if value is None:
        return None
    value = value.strip()
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    now = now or datetime.now(timezone.utc)
    return max(0.0, (when - now).total_seconds())


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_record(url: str, depth: int = 0) -> dict:
    """A manifest row with every field present (so every row has the same keys)."""
    return {
        "url": url, "final_url": None, "status": None, "http_status": None,
        "content_type": None, "encoding": None, "encoding_source": None, "sha256": None,
        "bytes": 0, "fetched_at": utc_now(), "path": None, "error": None,
        "depth": depth, "attempts": 0, "redirects": 0,
    }


# --------------------------------------------------------------------------- HTTP

class Failure(Exception):
    """A fetch outcome that is not a page: ``status`` is the manifest reason."""

    def __init__(self, status: str, error: str, http_status: int | None = None, *,
                 received: int = 0, retryable: bool = False, retry_after: float | None = None):
        super().__init__(error)
        self.status, self.error, self.http_status = status, error, http_status
        self.received = received  # body bytes read before giving up
        self.retryable, self.retry_after = retryable, retry_after


class _Redirect(Exception):
    def __init__(self, target: str, code: int):
        super().__init__(target)
        self.target, self.code = target, code


@dataclass
class Response:
    final_url: str
    http_status: int
    headers: dict
    body: bytes


def make_session(cfg: ScrapeConfig) -> requests.Session:
    session = requests.Session()
    session.headers.update({
        "User-Agent": cfg.user_agent,
        "Accept": "text/html,application/xhtml+xml;q=0.9,*/*;q=0.5",
    })
    return session


class Fetcher:
    """One polite HTTP client: robots.txt per host, per-host delay, retries, caps.

    ``sleep`` and ``clock`` are injectable so tests can run without real waiting.
    """

    def __init__(self, cfg: ScrapeConfig, session: requests.Session | None = None,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic):
        self.cfg = cfg
        self.session = session or make_session(cfg)
        self.session.headers["User-Agent"] = cfg.user_agent
        self.sleep, self.clock = sleep, clock
        self._robots: dict[str, urllib.robotparser.RobotFileParser | Failure] = {}
        self._last: dict[str, float] = {}

    # ---- politeness
    def _host_delay(self, url: str) -> float:
        delay = self.cfg.delay_s
        rp = self._robots.get(_origin(url))
        if isinstance(rp, urllib.robotparser.RobotFileParser):
            crawl_delay = rp.crawl_delay(self.cfg.user_agent)
            if crawl_delay:
                delay = max(delay, min(float(crawl_delay), self.cfg.max_retry_after_s))
        return delay

    def _wait_turn(self, url: str) -> None:
        origin = _origin(url)
        last = self._last.get(origin)
        if last is not None:
            wait = last + self._host_delay(url) - self.clock()
            if wait > 0:
                self.sleep(wait)
        self._last[origin] = self.clock()

    # ---- robots.txt
    def robots_verdict(self, url: str) -> Failure | None:
        """None if ``url`` may be fetched, else the Failure to record."""
        if not self.cfg.respect_robots:
            return None
        origin = _origin(url)
        if origin not in self._robots:
            self._robots[origin] = self._load_robots(origin)
        rp = self._robots[origin]
        if isinstance(rp, Failure):
            return Failure(rp.status, rp.error)
        if not rp.can_fetch(self.cfg.user_agent, url):
            return Failure("robots_disallowed", f"disallowed by {origin}/robots.txt")
        return None

    def _load_robots(self, origin: str) -> urllib.robotparser.RobotFileParser | Failure:
        """RFC 9309: 2xx -> rules; 4xx (or too many redirects) -> allow all; 5xx or
        unreachable after retries -> disallow all: the host's pages are not requested and get
        status robots_unavailable (5xx) or the network error (connection_error, timeout...)."""
        rp = urllib.robotparser.RobotFileParser(origin + "/robots.txt")
        try:
            resp = self.get(origin + "/robots.txt", max_bytes=ROBOTS_MAX_BYTES,
                            robots=False, partial_ok=True)
            rp.parse(resp.body.decode("utf-8", errors="replace").splitlines())
        except Failure as f:
            if f.http_status and 400 <= f.http_status < 500 and f.http_status != 429:
                rp.allow_all = True
            elif f.status in ("redirect_loop", "too_many_redirects", "bad_redirect",
                              "unsupported_content_type"):
                rp.allow_all = True
            elif f.status in ("connection_error", "timeout", "ssl_error", "invalid_url"):
                return Failure(f.status, f"{origin}/robots.txt: {f.error}")
            else:
                return Failure("robots_unavailable",
                               f"{origin}/robots.txt could not be read ({f.status}: {f.error}); "
                               "RFC 9309 says to assume everything is disallowed")
        log.debug("robots.txt for %s loaded", origin)
        return rp

    # ---- requests
    def get(self, url: str, *, max_bytes: int | None = None, robots: bool = True,
            accept: Callable[[dict], Failure | None] | None = None,
            allow: Callable[[str], Failure | None] | None = None,
            partial_ok: bool = False, stats: dict | None = None) -> Response:
        """GET ``url``, following redirects by hand and retrying transient failures.

        Raises Failure for every outcome that is not a complete 2xx body. ``accept(headers)``
        may veto a response before its body is read (content type); ``allow(url)`` may veto a
        redirect target (crawl domains). ``stats`` receives ``requests``, ``retries``,
        ``redirects`` and ``final_url`` as they happen, for the manifest row.
        """
        cfg = self.cfg
        max_bytes = cfg.max_bytes if max_bytes is None else max_bytes
        stats = stats if stats is not None else {}
        for key in ("requests", "retries", "redirects"):
            stats.setdefault(key, 0)
        chain = [url]
        current, tries = url, 0  # tries of the current hop
        while True:
            stats["final_url"] = current
            if robots:
                verdict = self.robots_verdict(current)
                if verdict:
                    raise verdict
            tries += 1
            stats["requests"] += 1
            try:
                return self._once(current, max_bytes, accept, partial_ok)
            except _Redirect as r:
                target = r.target
                if urlsplit(target).scheme not in ("http", "https"):
                    raise Failure("bad_redirect", f"redirect to non-http URL {target}", r.code)
                if target in chain:
                    raise Failure("redirect_loop",
                                  "redirect loop: " + " -> ".join(chain + [target]), r.code)
                chain.append(target)
                if len(chain) - 1 > cfg.max_redirects:
                    raise Failure("too_many_redirects",
                                  f"more than max_redirects={cfg.max_redirects} redirects "
                                  f"(last {current} -> {target})", r.code)
                veto = allow(target) if allow else None
                if veto:
                    veto.http_status = r.code
                    raise veto
                current, tries = target, 0
                stats["redirects"] += 1
            except Failure as f:
                if not f.retryable:
                    raise
                if tries > cfg.retries:
                    f.error += f" (after {tries} attempts)"
                    raise
                if f.retry_after is not None:
                    if f.retry_after > cfg.max_retry_after_s:
                        raise Failure("retry_after_too_long",
                                      f"HTTP {f.http_status} asked to retry after "
                                      f"{f.retry_after:.0f}s > max_retry_after_s="
                                      f"{cfg.max_retry_after_s}", f.http_status) from None
                    wait = f.retry_after
                else:
                    wait = min(cfg.backoff_s * 2 ** (tries - 1), cfg.max_retry_after_s)
                log.debug("%s: %s, retry %d in %.2fs", current, f.status, tries, wait)
                stats["retries"] += 1
                if wait > 0:
                    self.sleep(wait)

    def _once(self, url: str, max_bytes: int, accept, partial_ok: bool) -> Response:
        """One request. Returns a complete 2xx response; raises _Redirect or Failure
        (``retryable`` for 5xx, 429, timeouts, connection errors and broken bodies)."""
        cfg = self.cfg
        self._wait_turn(url)
        try:
            resp = self.session.get(url, stream=True, allow_redirects=False,
                                    timeout=(cfg.timeout_s, cfg.timeout_s))
        except requests.exceptions.Timeout as e:
            raise Failure("timeout", f"no response within timeout_s={cfg.timeout_s} ({e})",
                          retryable=True) from None
        except requests.exceptions.SSLError as e:
            raise Failure("ssl_error", str(e)) from None
        except requests.exceptions.ConnectionError as e:
            raise Failure("connection_error", str(e), retryable=True) from None
        except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                requests.exceptions.InvalidSchema, ValueError) as e:
            raise Failure("invalid_url", str(e)) from None
        except requests.exceptions.RequestException as e:
            raise Failure("request_error", f"{type(e).__name__}: {e}") from None
        with resp:
            code = resp.status_code
            if code == 429 or code >= 500:
                raise Failure(f"http_{code}", f"HTTP {code} {resp.reason or ''}".strip(), code,
                              retryable=True,
                              retry_after=parse_retry_after(resp.headers.get("Retry-After")))
            if code in REDIRECT_CODES:
                location = resp.headers.get("Location")
                if not location:
                    raise Failure(f"http_{code}", f"HTTP {code} without a Location header", code)
                try:
                    target = normalize_url(urljoin(url, location.strip()))
                except ValueError as e:
                    raise Failure("bad_redirect", f"unparseable Location {location!r}: {e}",
                                  code) from None
                raise _Redirect(target, code)
            if code >= 300:
                raise Failure(f"http_{code}", f"HTTP {code} {resp.reason or ''}".strip(), code)
            headers = dict(resp.headers)
            if accept:
                veto = accept(headers)
                if veto:
                    veto.http_status = code
                    raise veto
            body = self._read_body(resp, max_bytes, partial_ok)
            return Response(url, code, headers, body)

    def _read_body(self, resp: requests.Response, max_bytes: int, partial_ok: bool) -> bytes:
        cfg = self.cfg
        code = resp.status_code
        declared = _int(resp.headers.get("Content-Length"))
        if declared is not None and declared > max_bytes and not partial_ok:
            raise Failure("too_large", f"Content-Length {declared} > max_bytes={max_bytes}", code)
        chunks: list[bytes] = []
        received = 0
        deadline = self.clock() + cfg.timeout_s
        try:
            for chunk in resp.iter_content(chunk_size=16384):
                chunks.append(chunk)
                received += len(chunk)
                if received > max_bytes:
                    if partial_ok:
                        return b"".join(chunks)[:max_bytes]
                    raise Failure("too_large", f"body exceeds max_bytes={max_bytes}", code,
                                  received=received)
                if self.clock() > deadline:
                    raise Failure("timeout", f"body not received within timeout_s={cfg.timeout_s}",
                                  code, received=received, retryable=True)
        except requests.exceptions.Timeout as e:
            raise Failure("timeout", f"read timed out after {received} bytes ({e})", code,
                          received=received, retryable=True) from None
        except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError) as e:
            raise Failure("truncated", f"body broken off after {received} bytes"
                          + (f" of Content-Length {declared}" if declared else "") + f" ({e})",
                          code, received=received, retryable=True) from None
        except requests.exceptions.ContentDecodingError as e:
            raise Failure("decode_error", f"bad Content-Encoding: {e}", code,
                          received=received) from None
        body = b"".join(chunks)
        encoded = resp.headers.get("Content-Encoding", "identity").lower() not in ("", "identity")
        if declared is not None and not encoded and len(body) < declared:
            raise Failure("truncated", f"received {len(body)} of Content-Length {declared} bytes",
                          code, received=len(body), retryable=True)
        return body

    # ---- pages
    def fetch(self, url: str, depth: int = 0,
              domains: Iterable[str] | None = None) -> tuple[dict, str | None]:
        """Fetch one http(s) page. Returns (manifest row, decoded HTML or None).

        ``attempts`` is 1 + the retries made (0: nothing was requested, e.g. robots.txt said
        no); ``redirects`` the redirect hops followed. With ``domains`` (crawled pages), a
        redirect that leaves them is not followed (status offsite_redirect).
        """
        rec = new_record(url, depth)
        stats: dict = {"requests": 0, "retries": 0, "redirects": 0, "final_url": url}
        content_type: dict = {}

        def accept(headers: dict) -> Failure | None:
            ctype = media_type(headers)
            content_type["value"] = ctype
            if ctype and ctype not in HTML_TYPES:
                return Failure("unsupported_content_type", f"content type {ctype} is not HTML")
            return None

        allow = None
        if domains is not None:
            domains = list(domains)

            def allow(target: str) -> Failure | None:
                if domain_allowed(target, domains):
                    return None
                return Failure("offsite_redirect", f"redirect to {target}, outside allowed_domains")

        try:
            resp = self.get(url, accept=accept, allow=allow, stats=stats)
        except Failure as f:
            rec.update(status=f.status, error=f.error, http_status=f.http_status,
                       bytes=f.received)
            rec["content_type"] = content_type.get("value")
            rec.update(final_url=stats["final_url"], redirects=stats["redirects"],
                       attempts=1 + stats["retries"] if stats["requests"] else 0)
            return rec, None
        rec.update(final_url=resp.final_url, http_status=resp.http_status,
                   attempts=1 + stats["retries"], redirects=stats["redirects"],
                   bytes=len(resp.body),
                   sha256=records.sha256_bytes(resp.body),
                   content_type=content_type.get("value"))
        return _finish_html(rec, resp.body, resp.headers)


def _finish_html(rec: dict, body: bytes, headers: Mapping[str, str]) -> tuple[dict, str | None]:
    """Decode a complete body into the row; checks it is non-empty HTML."""
    if not body.strip():
        rec.update(status="empty_body", error="the response body is empty")
        return rec, None
    text, codec, source = decode_html_ex(body, headers)
    if rec.get("content_type") is None:  # no Content-Type: accept only what looks like HTML
        if not re.match(r"\s*(<!--.*?-->\s*)*<(!doctype\s+html|html|head|body)\b", text[:4096],
                        re.I | re.S):
            rec.update(status="unsupported_content_type",
                       error="no Content-Type and the body does not look like HTML")
            return rec, None
        rec["content_type"] = "text/html"
    rec.update(status="ok", encoding=codec, encoding_source=source)
    return rec, as_utf8_html(text)


def media_type(headers: Mapping[str, str] | None) -> str | None:
    value = _header(headers, "content-type")
    if not value:
        return None
    return value.split(";", 1)[0].strip().lower() or None


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def fetch(url: str, cfg: ScrapeConfig, session: requests.Session | None = None,
          depth: int = 0) -> tuple[dict, str | None]:
    """Fetch one http(s) URL with a fresh Fetcher (robots.txt included)."""
    return Fetcher(cfg, session).fetch(normalize_url(url), depth)


# --------------------------------------------------------------------------- local files

def is_web(source: str) -> bool:
    return re.match(r"(?i)https?://", source.strip()) is not None


def local_url(path: Path, root: Path) -> str:
    """``file:<posix path relative to root>`` (absolute if the file is outside root)."""
    path = path.resolve()
    try:
        return "file:" + path.relative_to(root.resolve()).as_posix()
    except ValueError:
        return "file:" + path.as_posix()


@dataclass
class LocalSource:
    url: str
    path: Path | None                    # None: does not exist
    site_root: Path | None = None        # the folder source this file was found in


def expand_local(source: str, root: Path) -> list[LocalSource]:
    """Files of a local file or folder source. Folders give every *.html/*.htm below them
    (hidden files and folders skipped), sorted by relative path."""
    raw = source[5:] if source.startswith("file:") else source
    path = Path(raw)
    if not path.is_absolute():
        path = root / path
    if path.is_dir():
        files = sorted(
            (p for p in path.rglob("*")
             if p.suffix.lower() in (".html", ".htm") and p.is_file()
             and not any(part.startswith(".") for part in p.relative_to(path).parts)),
            key=lambda p: p.relative_to(path).as_posix())
        if not files:
            return [LocalSource(local_url(path, root), path)]  # recorded as empty_source
        return [LocalSource(local_url(p, root), p, path) for p in files]
    return [LocalSource(local_url(path, root), path if path.exists() else None)]


def local_robots(folder: Path, cache: dict) -> urllib.robotparser.RobotFileParser | None:
    """The robots.txt at the root of a folder source (a saved copy of a site), if any."""
    if folder not in cache:
        rp = None
        robots = folder / "robots.txt"
        if robots.is_file():
            rp = urllib.robotparser.RobotFileParser()
            rp.parse(robots.read_bytes()[:ROBOTS_MAX_BYTES].decode("utf-8", "replace").splitlines())
        cache[folder] = rp
    return cache[folder]


def read_local(src: LocalSource, cfg: ScrapeConfig,
               robots_cache: dict | None = None) -> tuple[dict, str | None]:
    """Read one local file into a manifest row. A folder source with a robots.txt at its
    root is treated like the site it mirrors: disallowed files become robots_disallowed."""
    url, path = src.url, src.path
    rec = new_record(url)
    rec["final_url"] = url
    if path is None:
        rec.update(status="not_found", error=f"no such file or folder: {url[5:]}")
        return rec, None
    if path.is_dir():
        rec.update(status="empty_source", error="folder holds no *.html or *.htm files")
        return rec, None
    if cfg.respect_robots and src.site_root is not None:
        rp = local_robots(src.site_root, robots_cache if robots_cache is not None else {})
        site_path = "/" + path.relative_to(src.site_root).as_posix()
        if rp is not None and not rp.can_fetch(cfg.user_agent, site_path):
            rec.update(status="robots_disallowed",
                       error=f"{site_path} is disallowed by the robots.txt at the root of "
                             "its folder source")
            return rec, None
    rec["attempts"] = 1
    if path.suffix.lower() not in HTML_SUFFIXES:
        rec.update(status="unsupported_content_type",
                   error=f"local file {path.name} is not .html/.htm/.xhtml")
        return rec, None
    try:
        with open(path, "rb") as f:
            body = f.read(cfg.max_bytes + 1)
    except OSError as e:
        rec.update(status="read_error", error=str(e))
        return rec, None
    if len(body) > cfg.max_bytes:
        rec.update(status="too_large", error=f"file exceeds max_bytes={cfg.max_bytes}",
                   bytes=len(body))
        return rec, None
    rec.update(bytes=len(body), sha256=records.sha256_bytes(body),
               content_type="application/xhtml+xml" if path.suffix.lower() == ".xhtml"
               else "text/html")
    return _finish_html(rec, body, {})


# --------------------------------------------------------------------------- core

@dataclass
class ScrapeResult:
    records: list[dict]                 # manifest rows, sorted by url
    pages: dict[str, str]               # row path -> UTF-8 HTML text, for every ok row
    crawl_skipped: int = 0              # URLs found after max_pages was reached


def scrape(sources: Iterable[str], cfg: ScrapeConfig, *, session: requests.Session | None = None,
           root: str | Path = ".", pages_dir: str | Path = OUT_DIR / "pages",
           fetcher: Fetcher | None = None) -> ScrapeResult:
    """Fetch every source (and, with ``cfg.crawl``, the pages it links to).

    Pure apart from the network and reading local sources: returns the manifest rows and the
    page texts; ``write_outputs`` puts them on disk. Row ``path`` is ``pages_dir/<safe name>``.
    """
    root = Path(root)
    fetcher = fetcher or Fetcher(cfg, session)
    sources = list(sources)
    rows: dict[str, dict] = {}
    texts: dict[str, str] = {}

    web: list[str] = []
    local: list[LocalSource] = []
    for source in sources:
        if is_web(source):
            try:
                web.append(normalize_url(source))
                continue
            except ValueError as e:
                status, error = "invalid_url", f"cannot parse URL {source!r}: {e}"
        elif "://" in source:
            status, error = "unsupported_scheme", "only http(s) URLs and local paths are supported"
        else:
            local.extend(expand_local(source, root))
            continue
        rec = new_record(source.strip())
        rec.update(status=status, final_url=rec["url"], error=error)
        rows.setdefault(rec["url"], rec)

    domains = list(cfg.allowed_domains) or sorted({host_of(u) for u in web})
    queue: deque[tuple[str, int]] = deque()
    seen: set[str] = set(rows)
    for url in web:
        if url not in seen:
            seen.add(url)
            queue.append((url, 0))
    unique_local = []
    for src in local:
        if src.url not in seen:
            seen.add(src.url)
            unique_local.append(src)
    local = unique_local

    progress = Progress(log, "pages", len(queue) + len(local))
    robots_cache: dict = {}
    for src in local:
        rec, text = read_local(src, cfg, robots_cache)
        rows[src.url] = rec
        if text is not None:
            texts[src.url] = text
        if rec["status"] != "ok":
            log.warning("%s: %s (%s)", src.url, rec["status"], rec["error"])
        progress.update()

    final_urls: dict[str, str] = {}
    skipped: set[str] = set()  # found after max_pages
    while queue:
        url, depth = queue.popleft()
        rec, text = fetcher.fetch(url, depth, domains if depth > 0 else None)
        final = rec.get("final_url")
        if rec["status"] == "ok" and final in final_urls:
            rec.update(status="duplicate", error=f"same final_url as {final_urls[final]}")
            text = None
        elif rec["status"] == "ok":
            final_urls[final] = url
        rows[url] = rec
        if text is not None:
            texts[url] = text
            if cfg.crawl and depth < cfg.max_depth and domain_allowed(final, domains):
                for link in extract_links(text, final):
                    if link in seen or not domain_allowed(link, domains):
                        continue
                    if len(seen) >= cfg.max_pages:
                        skipped.add(link)
                        continue
                    seen.add(link)
                    queue.append((link, depth + 1))
                    progress.total += 1
        if rec["status"] != "ok":
            log.warning("%s: %s (%s)", url, rec["status"], rec["error"])
        progress.update()
    if skipped:
        log.warning("crawl: %d more URLs found after max_pages=%d were not fetched",
                    len(skipped), cfg.max_pages)

    pages: dict[str, str] = {}
    pages_dir = Path(pages_dir)
    for url, text in texts.items():
        path = (pages_dir / safe_filename(url)).as_posix()
        rows[url]["path"] = path
        pages[path] = text
    return ScrapeResult([rows[u] for u in sorted(rows)], pages, len(skipped))


def summarise(result: ScrapeResult | list[dict]) -> dict:
    rows = result.records if isinstance(result, ScrapeResult) else result
    by_reason = Counter(r["status"] for r in rows if r["status"] not in ("ok", "duplicate"))
    ok = sum(r["status"] == "ok" for r in rows)
    duplicates = sum(r["status"] == "duplicate" for r in rows)
    total = len(rows)
    counted = total - duplicates
    return {
        "sources": total,
        "ok": ok,
        "failed": sum(by_reason.values()),
        "failed_by_reason": dict(sorted(by_reason.items())),
        "duplicates": duplicates,
        "ok_fraction": round(ok / counted, 4) if counted else 0.0,
        "bytes": sum(r["bytes"] or 0 for r in rows if r["status"] == "ok"),
        "retries": sum(max(0, (r["attempts"] or 0) - 1) for r in rows),
        "crawl_skipped": result.crawl_skipped if isinstance(result, ScrapeResult) else 0,
    }


def failure_summary(rows: list[dict], stats: dict, cfg: ScrapeConfig,
                    manifest: str | Path = OUT_DIR / "manifest.jsonl") -> str:
    """One paragraph: how many succeeded against the threshold, and failures by reason with
    up to three example URLs and the first error for each."""
    parts = []
    for reason, n in sorted(stats["failed_by_reason"].items(), key=lambda kv: (-kv[1], kv[0])):
        bad = [r for r in rows if r["status"] == reason]
        examples = ", ".join(r["url"] for r in bad[:3]) + (", ..." if n > 3 else "")
        parts.append(f"{reason} x{n} ({examples}; e.g. {bad[0]['error']})")
    counted = stats["sources"] - stats["duplicates"]
    return (f"scrape failed: only {stats['ok']} of {counted} pages succeeded "
            f"({100 * stats['ok_fraction']:.0f}% < min_ok_fraction {100 * cfg.min_ok_fraction:.0f}%). "
            f"Failures by reason: {'; '.join(parts) or 'none (no sources at all)'}. "
            f"Every row is in {manifest}; fix scrape.sources in params.yaml, or lower "
            f"scrape.min_ok_fraction if these failures are expected.")


def write_outputs(result: ScrapeResult, out_dir: str | Path, stats_path: str | Path,
                  stats: dict, root: str | Path = ".") -> None:
    """Pages (only changed ones rewritten), stale pages removed, manifest, stats; atomic."""
    root, out_dir = Path(root), Path(out_dir)
    pages_dir = out_dir / "pages"
    pages_dir.mkdir(parents=True, exist_ok=True)
    keep = set()
    for rel, text in result.pages.items():
        path = Path(rel) if Path(rel).is_absolute() else root / rel
        # safe_filename guarantees this; checked again because a wrong write is not undoable
        if path.resolve().parent != pages_dir.resolve():
            raise RuntimeError(f"refusing to write {path} outside {pages_dir}")
        data = text.encode("utf-8")
        if not path.exists() or path.read_bytes() != data:
            records.atomic_write_bytes(path, data)
        keep.add(path.name)
    for stale in sorted(pages_dir.iterdir()):
        if stale.name not in keep and (stale.is_file() or stale.is_symlink()):
            log.info("removing stale page %s", stale.name)
            stale.unlink()
    records.write_jsonl(out_dir / "manifest.jsonl", result.records)
    records.write_json(stats_path, stats)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m stages.scrape", description=__doc__.split("\n")[0])
    ap.add_argument("--params", default=None, help="params file (default params.yaml)")
    ap.add_argument("--out", default=str(OUT_DIR), help="output folder (pages/ + manifest.jsonl)")
    ap.add_argument("--stats", default=str(STATS_FILE), help="counts JSON")
    args = ap.parse_args(argv)

    cfg = load_section(ScrapeConfig, "scrape", args.params)
    out_dir = Path(args.out)
    t0 = time.monotonic()
    result = scrape(cfg.sources, cfg, pages_dir=out_dir / "pages")
    stats = summarise(result)
    write_outputs(result, out_dir, args.stats, stats)
    log.info("%d rows: %d ok, %d failed %s, %d duplicates, %d bytes, %d retries in %.1fs",
             stats["sources"], stats["ok"], stats["failed"], stats["failed_by_reason"] or "",
             stats["duplicates"], stats["bytes"], stats["retries"], time.monotonic() - t0)
    if stats["sources"] == 0 or stats["ok_fraction"] < cfg.min_ok_fraction:
        print(failure_summary(result.records, stats, cfg, out_dir / "manifest.jsonl"),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
