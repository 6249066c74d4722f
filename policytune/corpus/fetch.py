"""The scraper's polite HTTP client and the manifest row of one fetched page.

``Fetcher``: robots.txt (fetched once per host, parsed by ``protego`` per RFC 9309: ``*``
and ``$`` wildcards, the longest matching rule wins, Allow wins a tie), a per-host delay
(robots Crawl-delay wins if larger), timeouts, retries with exponential backoff on 5xx / 429
/ connection errors (``Retry-After`` honoured up to a cap), a size cap, and redirects
followed by hand with loop detection. Every outcome that is not a page is a ``Failure``
whose ``status`` is the manifest reason.

Redirects are checked before they are followed (``redirect_veto``): a redirect whose target
host is, or resolves to, a loopback, link-local (169.254.0.0/16: cloud metadata), private,
multicast, unspecified or reserved address is refused (status ``private_redirect``) unless
the source URL's own host is such an address (a local deployment) or
``scrape.allow_private_redirects`` is true. This holds for sources (depth 0) too, and for
robots.txt. (The target is resolved once here and again by the HTTP client; a host that
changes its DNS answer in between is not caught.)

The URL is requested as given, credentials included, but every URL and message recorded or
logged is redacted (``urls.redact_url`` / ``urls.scrub``): no ``user:password@``, no secret
query values (``scrape.secret_query_keys``).

``finish_html`` accepts a body without Content-Type only if it starts like HTML, found by a
linear scan (leading whitespace and comments skipped, at most 64 KiB).
"""

from __future__ import annotations

import re
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Iterable, Mapping
from urllib.parse import urljoin, urlsplit

import requests
from protego import Protego

from policytune.core import records
from policytune.core.http import parse_retry_after
from policytune.core.progress import get_logger
from policytune.corpus.charset import as_utf8_html, decode_html_ex, media_type
from policytune.corpus.config import ScrapeConfig
from policytune.corpus.urls import (DEFAULT_SECRET_QUERY_KEYS, Resolver, address_kind, domain_allowed, host_addresses,
                                    host_of, normalize_url, redact_url, scrub, url_secrets)

log = get_logger("scrape")

HTML_TYPES = ("text/html", "application/xhtml+xml")
REDIRECT_CODES = (301, 302, 303, 307, 308)
ROBOTS_MAX_BYTES = 500 * 1024  # RFC 9309: parse at least the first 500 KiB
HTML_SNIFF_CHARS = 64 * 1024  # leading whitespace/comments skipped looking for <html> etc.


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


def redirect_veto(source_url: str, target_url: str, allow_private: bool = False, *,
                  resolve: Resolver = socket.getaddrinfo,
                  secret_keys: Iterable[str] = DEFAULT_SECRET_QUERY_KEYS) -> Failure | None:
    """None if a redirect from (the chain that started at) ``source_url`` to ``target_url``
    may be followed; else the ``private_redirect`` Failure to record.

    Refused: a target whose host is, or resolves to (every address is checked), a
    non-public address (``urls.address_kind``). Allowed anyway: ``allow_private``, or a
    source whose own host is such an address (a local deployment). A target name that does
    not resolve is let through: the request fails as a connection error, as any other.
    """
    if allow_private:
        return None
    target_host = host_of(target_url).strip("[]")
    bad = [(ip, kind) for ip in host_addresses(target_host, resolve)
           if (kind := address_kind(ip)) is not None]
    if not bad:
        return None
    if any(address_kind(ip) for ip in host_addresses(host_of(source_url), resolve)):
        return None  # the source itself is local: its redirects may stay local
    ip, kind = bad[0]
    named = target_host if str(ip) == target_host else f"{target_host} (resolves to {ip})"
    return Failure("private_redirect",
                   f"redirect to {redact_url(target_url, secret_keys)} refused: {named} is a "
                   f"{kind} address and the source's host is public (a public page may not "
                   f"send the scraper to loopback, link-local/metadata, private or reserved "
                   f"addresses); set scrape.allow_private_redirects: true to follow such "
                   f"redirects")


class Fetcher:
    """One polite HTTP client: robots.txt per host, per-host delay, retries, caps, the
    redirect guard.

    ``sleep``, ``clock`` and ``resolve`` (host name -> addresses, ``socket.getaddrinfo``'s
    signature) are injectable so tests can run without real waiting or real DNS.
    """

    def __init__(self, cfg: ScrapeConfig, session: requests.Session | None = None,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic,
                 resolve: Resolver = socket.getaddrinfo):
        self.cfg = cfg
        self.session = session or make_session(cfg)
        self.session.headers["User-Agent"] = cfg.user_agent
        self.sleep, self.clock, self.resolve = sleep, clock, resolve
        self._robots: dict[str, Protego | Failure] = {}
        self._last: dict[str, float] = {}

    def shown(self, url: str) -> str:
        """``url`` as it may be recorded or logged (credentials and secret query values out)."""
        return redact_url(url, self.cfg.secret_query_keys)

    def _scrub(self, text: str | None, *urls: str) -> str | None:
        secrets: set[str] = set()
        for url in urls:
            secrets |= url_secrets(url, self.cfg.secret_query_keys)
        return scrub(text, secrets, self.cfg.secret_query_keys)

    # ---- politeness
    def _host_delay(self, url: str) -> float:
        delay = self.cfg.delay_s
        rp = self._robots.get(_origin(url))
        if isinstance(rp, Protego):
            crawl_delay = rp.crawl_delay(self.cfg.user_agent)
            if crawl_delay:
                delay = max(delay, min(float(crawl_delay), self.cfg.max_retry_after_s))
        return delay

    def _wait_turn(self, url: str) -> None:
        origin = _origin(url).rpartition("@")[2]  # one host, whatever credentials the URL has
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
        if not rp.can_fetch(url, self.cfg.user_agent):
            return Failure("robots_disallowed", f"disallowed by {self.shown(origin)}/robots.txt")
        return None

    def _load_robots(self, origin: str) -> Protego | Failure:
        """RFC 9309: 2xx -> rules; 4xx (or too many redirects, or a refused redirect) ->
        allow all; 5xx or unreachable after retries -> disallow all: the host's pages are not
        requested and get status robots_unavailable (5xx) or the network error
        (connection_error, timeout...)."""
        shown = self.shown(origin)
        try:
            resp = self.get(origin + "/robots.txt", max_bytes=ROBOTS_MAX_BYTES,
                            robots=False, partial_ok=True)
            rp = Protego.parse(resp.body.decode("utf-8", errors="replace"))
        except Failure as f:
            error = self._scrub(f.error, origin)
            if f.http_status and 400 <= f.http_status < 500 and f.http_status != 429:
                rp = Protego.parse("")
            elif f.status in ("redirect_loop", "too_many_redirects", "bad_redirect",
                              "unsupported_content_type", "private_redirect"):
                rp = Protego.parse("")
            elif f.status in ("connection_error", "timeout", "ssl_error", "invalid_url"):
                return Failure(f.status, f"{shown}/robots.txt: {error}")
            else:
                return Failure("robots_unavailable",
                               f"{shown}/robots.txt could not be read ({f.status}: {error}); "
                               "RFC 9309 says to assume everything is disallowed")
        log.debug("robots.txt for %s loaded", shown)
        return rp

    # ---- requests
    def get(self, url: str, *, max_bytes: int | None = None, robots: bool = True,
            accept: Callable[[dict], Failure | None] | None = None,
            allow: Callable[[str], Failure | None] | None = None,
            partial_ok: bool = False, stats: dict | None = None) -> Response:
        """GET ``url``, following redirects by hand and retrying transient failures.

        Raises Failure for every outcome that is not a complete 2xx body. ``accept(headers)``
        may veto a response before its body is read (content type); ``allow(url)`` may veto a
        redirect target (crawl domains); ``redirect_veto`` vetoes targets on non-public
        addresses. ``stats`` receives ``requests``, ``retries``, ``redirects``, ``final_url``
        and ``chain`` (every URL requested, unredacted) as they happen, for the manifest row.
        Failure messages name URLs redacted.
        """
        cfg = self.cfg
        max_bytes = cfg.max_bytes if max_bytes is None else max_bytes
        stats = stats if stats is not None else {}
        for key in ("requests", "retries", "redirects"):
            stats.setdefault(key, 0)
        chain = stats["chain"] = [url]
        current, tries = url, 0  # tries of the current hop
        shown = self.shown
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
                    raise Failure("bad_redirect", f"redirect to non-http URL {shown(target)}",
                                  r.code)
                if target in chain:
                    raise Failure("redirect_loop", "redirect loop: "
                                  + " -> ".join(shown(u) for u in chain + [target]), r.code)
                chain.append(target)
                if len(chain) - 1 > cfg.max_redirects:
                    raise Failure("too_many_redirects",
                                  f"more than max_redirects={cfg.max_redirects} redirects "
                                  f"(last {shown(current)} -> {shown(target)})", r.code)
                veto = redirect_veto(url, target, cfg.allow_private_redirects,
                                     resolve=self.resolve, secret_keys=cfg.secret_query_keys)
                if veto:
                    veto.http_status = r.code
                    raise veto
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
                log.debug("%s: %s, retry %d in %.2fs", shown(current), f.status, tries, wait)
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
        redirect that leaves them is not followed (status offsite_redirect). The row's
        ``url``, ``final_url`` and ``error`` are redacted (no credentials, no secret query
        values); the request used ``url`` as given.
        """
        rec, text, _ = self.fetch_page(url, depth, domains)
        return rec, text

    def fetch_page(self, url: str, depth: int = 0, domains: Iterable[str] | None = None
                   ) -> tuple[dict, str | None, str]:
        """``fetch``, plus the final URL as requested (unredacted: the base for the page's
        links, so that a crawl keeps its credentials on the same host)."""
        stats: dict = {"requests": 0, "retries": 0, "redirects": 0, "final_url": url,
                       "chain": [url]}
        rec, text = self._fetch(url, depth, domains, stats)
        chain = stats["chain"]
        rec.update(url=self.shown(url), final_url=self.shown(rec["final_url"] or url),
                   error=self._scrub(rec["error"], *chain))
        return rec, text, stats["final_url"]

    def _fetch(self, url: str, depth: int, domains: Iterable[str] | None,
               stats: dict) -> tuple[dict, str | None]:
        rec = new_record(url, depth)
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
                return Failure("offsite_redirect",
                               f"redirect to {self.shown(target)}, outside allowed_domains")

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
        if not looks_like_html(text):
            rec.update(status="unsupported_content_type",
                       error="no Content-Type and the body does not look like HTML "
                             f"(no <!doctype html>, <html>, <head> or <body> after leading "
                             f"whitespace and comments in the first {HTML_SNIFF_CHARS} characters)")
            return rec, None
        rec["content_type"] = "text/html"
    rec.update(status="ok", encoding=codec, encoding_source=source)
    return rec, as_utf8_html(text)


_HTML_OPENER = re.compile(r"<(?:!doctype\s{1,64}html|html|head|body)\b", re.I)


def looks_like_html(text: str, limit: int = HTML_SNIFF_CHARS) -> bool:
    """Whether ``text`` starts, after whitespace and ``<!-- -->`` comments, with
    ``<!doctype html``, ``<html``, ``<head`` or ``<body``. A linear scan of at most ``limit``
    characters (a backtracking regex over repeated comments is exponential)."""
    head = text[:limit]
    pos, n = 0, len(head)
    while True:
        while pos < n and head[pos].isspace():
            pos += 1
        if head.startswith("<!--", pos):
            end = head.find("-->", pos + 4)
            if end == -1:
                return False
            pos = end + 3
            continue
        return _HTML_OPENER.match(head, pos) is not None


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
