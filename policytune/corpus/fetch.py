"""The scraper's polite HTTP client and the manifest row of one fetched page.

``Fetcher``: robots.txt (fetched once per host, RFC 9309), a per-host delay (robots
Crawl-delay wins if larger), timeouts, retries with exponential backoff on 5xx / 429 /
connection errors (``Retry-After`` honoured up to a cap), a size cap, and redirects followed
by hand with loop detection. Every outcome that is not a page is a ``Failure`` whose
``status`` is the manifest reason.
"""

from __future__ import annotations

import re
import time
import urllib.robotparser
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Iterable, Mapping
from urllib.parse import urljoin, urlsplit

import requests

from policytune.core import records
from policytune.core.http import parse_retry_after
from policytune.core.progress import get_logger
from policytune.corpus.charset import as_utf8_html, decode_html_ex, media_type
from policytune.corpus.config import ScrapeConfig
from policytune.corpus.urls import domain_allowed, normalize_url

log = get_logger("scrape")

HTML_TYPES = ("text/html", "application/xhtml+xml")
REDIRECT_CODES = (301, 302, 303, 307, 308)
ROBOTS_MAX_BYTES = 500 * 1024  # RFC 9309: parse at least the first 500 KiB


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
        return finish_html(rec, resp.body, resp.headers)



def finish_html(rec: dict, body: bytes, headers: Mapping[str, str]) -> tuple[dict, str | None]:
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
