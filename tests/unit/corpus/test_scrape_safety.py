"""The scraper on hostile input: pathological page text (every decode / sniff / rewrite is
linear; property tests plus fixed worst cases, timed), redirects to private addresses (SSRF:
the rule on many addresses, and a real server reached through a loopback proxy so a public
source can be tested offline), symlinks out of local folder sources, and credentials in URLs
(never recorded or logged, still sent)."""

from __future__ import annotations

import base64
import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policytune.corpus.charset import as_utf8_html, decode_html, decode_html_ex, meta_charset
from policytune.corpus.config import ScrapeConfig
from policytune.corpus.fetch import Fetcher, finish_html, looks_like_html, new_record, redirect_veto
from policytune.corpus.scrape import failure_summary, scrape, summarise
from policytune.corpus.urls import redact_url, scrub, url_secrets
from tests.unit.corpus.test_scrape import config, page, run_scrape, session_for

# --------------------------------------------------------------------------- linear scans

CPU_BOUND_S = 2.0  # each call; the old regexes took minutes (quadratic) or forever (exponential)


def cpu(fn, *args):
    t0 = time.process_time()
    out = fn(*args)
    return out, time.process_time() - t0


def no_ctype(body: bytes):
    return finish_html(new_record("http://h.test/x"), body, {})


def html_ctype(body: bytes):
    rec = new_record("http://h.test/x")
    rec["content_type"] = "text/html"
    return finish_html(rec, body, {"Content-Type": "text/html"})


PATHOLOGICAL = {
    # exponential for \s*(<!--.*?-->\s*)*<html: never finished
    "100k empty comments then <html>": b"<!---->" * 100_000 + b"<html><body>x</body></html>",
    "100k empty comments, no opener": b"<!---->" * 100_000 + b"plain text",
    # quadratic for <meta[^>]*?charset: ~15 min for 1 MB
    "1 MB of '<meta ' without '>'": b"<meta " * 174_763,
    "1 MB of '<meta ' then one '>'": b"<meta " * 174_763 + b">",
    "1 MB of '<meta charset=' then one '>'": b"<meta charset=" * 71_429 + b">",
    "1 MB of '<meta x>' tags": b"<meta x>" * 131_072,
    "5 MB without spaces (ASCII)": b"a" * 5_000_000,
    "5 MB without spaces (one accented letter: the detector runs)": b"\xe9" * 5_000_000,
    "5 MB of undefined windows-1252 bytes": b"\x81\x8d" * 2_500_000,
    "1 MB of '<script' without '>'": b"<script" * 149_797,
    "5 MB of spaces then <?xml": b" " * 5_000_000 + b"<?xml encoding='latin1'?>",
}


@pytest.mark.parametrize("name", sorted(PATHOLOGICAL))
def test_pathological_pages_are_linear(name):
    body = PATHOLOGICAL[name]
    (text, _), took = cpu(decode_html, body, {})
    assert took < CPU_BOUND_S, f"decode_html: {took:.2f}s"
    _, took = cpu(as_utf8_html, text)
    assert took < CPU_BOUND_S, f"as_utf8_html: {took:.2f}s"
    for finish in (no_ctype, html_ctype):
        (rec, _), took = cpu(finish, body)
        assert took < CPU_BOUND_S, f"{finish.__name__}: {took:.2f}s"
        assert rec["status"] in ("ok", "unsupported_content_type")


def test_comment_skipping_is_bounded_but_correct():
    # comments before the opener are skipped (within the first 64 KiB)...
    rec, _ = no_ctype(b"\n<!-- a -->  <!---->\n<!-- <html> -->\t<!DOCTYPE  html><p>x")
    assert rec["status"] == "ok" and rec["content_type"] == "text/html"
    assert no_ctype(b"<!---->" * 1000 + b"<html>")[0]["status"] == "ok"
    # ...a comment ends at its first -->, and 100k comments exceed the bound: not HTML
    assert no_ctype(b"<!-- a --> junk --> <html>")[0]["status"] == "unsupported_content_type"
    assert no_ctype(PATHOLOGICAL["100k empty comments then <html>"])[0]["status"] \
        == "unsupported_content_type"
    assert not looks_like_html("<!-- never closed <html>")
    assert not looks_like_html("<htmlx>") and looks_like_html("<HEAD>") and looks_like_html("<body")


TOKENS = ["<!--", "-->", "<!---->", "<meta ", "<meta", "charset=", "charset = '", "latin1", ">",
          "<", " ", "\n", "\u00e9", "<script", "<?xml", " encoding='", "'", '"', "<html>",
          "<meta charset=windows-1252>", "x", "-", "\x00"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(TOKENS), min_size=1, max_size=12), st.integers(1, 10_000))
def test_repeated_fragments_are_linear(tokens, repeat):
    """Any short mix of tag fragments repeated up to 10k times (up to ~3 MB)."""
    text = "".join(tokens) * repeat
    body = text.encode("utf-8")
    for fn, arg in ((decode_html_ex, body), (as_utf8_html, text), (looks_like_html, text),
                    (meta_charset, body), (no_ctype, body)):
        _, took = cpu(fn, arg)
        assert took < 1.0, (fn.__name__, len(text), took)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(TOKENS), max_size=40).map("".join))
def test_charset_rewrite_is_idempotent_and_declares_utf8(text):
    once = as_utf8_html(text)
    assert as_utf8_html(once) == once
    if meta_charset(text.encode("utf-8")) is not None:
        assert meta_charset(once.encode("utf-8")) == "utf-8"


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(["<!---->", "<!-- x -->", " ", "\n", "<!--", "-->", "x"]),
                max_size=30).map("".join),
       st.sampled_from(["<html>", "<!doctype html>", "<body>", "<p>", "text", ""]))
def test_looks_like_html_matches_the_rule(prefix, opener):
    """True iff, after whitespace and complete comments, the text starts with an opener."""
    rest = prefix
    while True:
        rest = rest.lstrip()
        if rest.startswith("<!--") and "-->" in rest[4:]:
            rest = rest[rest.index("-->", 4) + 3:]
            continue
        break
    expected = rest == "" and opener in ("<html>", "<!doctype html>", "<body>")
    if rest.startswith("<!--"):
        expected = False  # an unclosed comment swallows the rest
    assert looks_like_html(prefix + opener) == expected


# --------------------------------------------------------------------------- SSRF: the rule

PUBLIC_SOURCE = "http://93.184.216.34/policies/index.html"


def numeric_only(host, port, **kw):
    """getaddrinfo that never asks DNS: IP literals in any inet_aton form only."""
    return socket.getaddrinfo(host, port, flags=socket.AI_NUMERICHOST, **kw)


def fake_dns(table: dict[str, list[str]]):
    def resolve(host, port, **kw):
        if host in table:
            return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "",
                     (a, 0)) for a in table[host]]
        return numeric_only(host, port, **kw)
    return resolve


REFUSED = [
    "http://169.254.169.254/latest/meta-data", "http://10.0.0.1/", "http://172.16.0.1/",
    "http://172.31.255.254/", "http://192.168.1.1/admin", "http://127.0.0.1:8080/",
    "http://127.1/", "http://2130706433/", "http://0177.0.0.1/", "http://0x7f000001/",
    "http://0/", "http://0.0.0.0/", "http://[::1]/", "http://[fe80::1]/", "http://[fc00::1]/",
    "http://[fd12:3456::1]/", "http://[::ffff:127.0.0.1]/", "http://[::ffff:169.254.169.254]/",
    "http://[::]/", "http://224.0.0.1/", "http://[ff02::1]/", "http://240.0.0.1/",
    "http://255.255.255.255/", "http://100.64.0.1/", "http://[2002:a00:1::]/",
    "http://[64:ff9b::a9fe:a9fe]/", "https://user:pw@10.0.0.1:8443/x?token=abc",
]
ALLOWED = ["http://8.8.8.8/", "https://[2606:4700::1111]/", "http://[64:ff9b::808:808]/",
           "http://93.184.216.35/page", "http://[2002:808:808::]/"]


@pytest.mark.parametrize("target", REFUSED)
def test_redirects_from_a_public_source_to_private_addresses_are_refused(target):
    veto = redirect_veto(PUBLIC_SOURCE, target, resolve=numeric_only)
    assert veto is not None and veto.status == "private_redirect"
    assert "allow_private_redirects" in veto.error and "refused" in veto.error
    assert "pw" not in veto.error and "abc" not in veto.error
    # allowed when configured, or when the source itself is on a private address
    assert redirect_veto(PUBLIC_SOURCE, target, True, resolve=numeric_only) is None
    for local_source in ("http://127.0.0.1:8000/", "http://10.1.2.3/", "http://[::1]/"):
        assert redirect_veto(local_source, target, resolve=numeric_only) is None


@pytest.mark.parametrize("target", ALLOWED)
def test_redirects_to_public_addresses_are_followed(target):
    assert redirect_veto(PUBLIC_SOURCE, target, resolve=numeric_only) is None


def test_redirect_target_names_are_resolved_and_every_address_must_be_public():
    resolve = fake_dns({"metadata.internal": ["169.254.169.254"],
                        "mixed.example": ["93.184.216.34", "10.0.0.5"],
                        "v6.example": ["2606:4700::1111", "fd00::5"],
                        "public.example": ["93.184.216.34", "2606:4700::1111"],
                        "www.example": ["93.184.216.34"], "localhost": ["127.0.0.1", "::1"]})
    source = "http://www.example/index.html"
    for host, address in (("metadata.internal", "169.254.169.254"), ("mixed.example", "10.0.0.5"),
                          ("v6.example", "fd00::5"), ("localhost", "127.0.0.1")):
        veto = redirect_veto(source, f"http://{host}/x", resolve=resolve)
        assert veto.status == "private_redirect", host
        assert f"{host} (resolves to {address})" in veto.error
    assert redirect_veto(source, "http://public.example/x", resolve=resolve) is None

    def nxdomain(host, *a, **kw):
        if host == "nowhere.example":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return resolve(host, *a, **kw)
    # a name that does not resolve is let through: the request fails as connection_error
    assert redirect_veto(source, "http://nowhere.example/", resolve=nxdomain) is None
    # a source named localhost is a local deployment
    assert redirect_veto("http://localhost:8000/", "http://10.0.0.1/", resolve=resolve) is None


def test_redirect_veto_with_the_real_resolver_for_ip_literals():
    """No monkeypatching: IP literals and numeric forms never reach DNS."""
    assert redirect_veto(PUBLIC_SOURCE, "http://169.254.169.254/").status == "private_redirect"
    assert redirect_veto(PUBLIC_SOURCE, "http://2130706433/").status == "private_redirect"
    assert redirect_veto(PUBLIC_SOURCE, "http://8.8.8.8/") is None


# --------------------------------------------------------------------------- SSRF: a real server

class Proxy:
    """A loopback HTTP proxy that *is* the web: it answers absolute-form requests for any
    host itself, so a "public" source (public.example) can be fetched offline. ``seen``
    lists every URL requested through it."""

    def __init__(self):
        self.seen: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                owner.seen.append(self.path)
                parts = urlsplit(self.path)
                route = {
                    "/to-metadata": (302, "http://169.254.169.254/latest/meta-data"),
                    "/to-ten": (301, "http://10.0.0.1/"),
                    "/to-intranet": (307, "http://intranet.example/secret.html"),
                    "/to-public": (302, "http://other.example/page.html"),
                }.get(parts.path)
                if parts.path == "/robots.txt":
                    return self._send(404, b"")
                if route:
                    self.send_response(route[0])
                    self.send_header("Location", route[1])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                return self._send(200, page(f"{parts.hostname}{parts.path}"))

            def _send(self, code, body):
                self.send_response(code)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def proxy():
    p = Proxy()
    try:
        yield p
    finally:
        p.stop()


PUBLIC_DNS = fake_dns({"public.example": ["93.184.216.34"], "other.example": ["93.184.216.35"],
                       "intranet.example": ["10.0.0.7"]})


def proxied_scrape(proxy, sources, cfg, tmp_path):
    session = session_for(cfg)
    session.proxies = {"http": proxy.url}
    fetcher = Fetcher(cfg, session, resolve=PUBLIC_DNS)
    result = scrape(sources, cfg, fetcher=fetcher, root=tmp_path,
                    pages_dir=tmp_path / "raw" / "pages")
    return {r["url"]: r for r in result.records}, summarise(result)


def test_public_source_redirects_to_private_addresses_are_not_followed(proxy, tmp_path):
    paths = ["/to-metadata", "/to-ten", "/to-intranet", "/to-public"]
    sources = ["http://public.example" + p for p in paths]
    by_url, stats = proxied_scrape(proxy, sources, config(), tmp_path)
    status = {p: by_url["http://public.example" + p]["status"] for p in paths}
    assert status == {"/to-metadata": "private_redirect", "/to-ten": "private_redirect",
                      "/to-intranet": "private_redirect", "/to-public": "ok"}
    meta = by_url["http://public.example/to-metadata"]
    assert meta["http_status"] == 302 and meta["final_url"] == "http://public.example/to-metadata"
    assert "169.254.169.254 is a link-local address" in meta["error"]
    assert "intranet.example (resolves to 10.0.0.7)" in by_url[
        "http://public.example/to-intranet"]["error"]
    assert by_url["http://public.example/to-public"]["final_url"] == "http://other.example/page.html"
    assert stats["failed_by_reason"] == {"private_redirect": 3}
    # nothing was ever requested from the private targets
    hosts = {urlsplit(u).hostname for u in proxy.seen}
    assert hosts == {"public.example", "other.example"}, hosts
    assert "http://other.example/page.html" in proxy.seen

    proxy.seen.clear()
    by_url, stats = proxied_scrape(proxy, sources, config(allow_private_redirects=True), tmp_path)
    assert stats["ok"] == 4, {u: r["error"] for u, r in by_url.items()}
    assert "http://169.254.169.254/latest/meta-data" in proxy.seen


def test_loopback_source_may_redirect_to_loopback(tmp_path):
    """A source on 127.0.0.1 is a local deployment: its redirects to localhost are followed."""
    proxy = Proxy()  # here just a server on 127.0.0.1; /to-public etc. unused
    try:
        port = proxy.url.rsplit(":", 1)[1]

        class Redirect(BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path == "/robots.txt":
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(302)
                self.send_header("Location", f"http://localhost:{port}/landing.html")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        try:
            src = f"http://127.0.0.1:{server.server_address[1]}/go"
            by_url, _, _ = run_scrape([src], config(), tmp_path)
            assert by_url[src]["status"] == "ok", by_url[src]["error"]
            assert by_url[src]["final_url"] == f"http://localhost:{port}/landing.html"
        finally:
            server.shutdown()
            server.server_close()
    finally:
        proxy.stop()


# --------------------------------------------------------------------------- symlinks

def test_symlinks_leaving_a_folder_source_are_not_read(tmp_path):
    site = tmp_path / "site"
    (site / "sub").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.html").write_text("<html><body>OUTSIDE-SECRET-CONTENT</body></html>")
    (outside / "more.html").write_text("<html><body>OUTSIDE-FOLDER-CONTENT</body></html>")
    (site / "index.html").write_bytes(page("Home"))
    (site / "sub" / "real.html").write_bytes(page("Real"))
    (site / "passwd.html").symlink_to("/etc/passwd")
    (site / "sub" / "leak.html").symlink_to(outside / "secret.html")
    (site / "alias.html").symlink_to(site / "sub" / "real.html")   # stays inside: fine
    (site / "relative.html").symlink_to("sub/real.html")
    (site / "linked-dir").symlink_to(outside, target_is_directory=True)
    (site / "up.html").symlink_to("../outside/secret.html")
    (tmp_path / "docs").mkdir()  # a file source that is a link out of its own folder
    (tmp_path / "docs" / "named.html").symlink_to(outside / "secret.html")

    by_url, stats, _ = run_scrape(["site", "docs/named.html"], config(), tmp_path)
    status = {u: r["status"] for u, r in by_url.items()}
    assert status == {
        "file:site/index.html": "ok", "file:site/sub/real.html": "ok",
        "file:site/passwd.html": "symlink_outside_source",
        "file:site/sub/leak.html": "symlink_outside_source",
        "file:site/up.html": "symlink_outside_source",
        "file:site/linked-dir": "symlink_outside_source",
        "file:docs/named.html": "symlink_outside_source",
    }  # alias.html / relative.html are sub/real.html (same url, read once)
    assert stats["failed_by_reason"] == {"symlink_outside_source": 5}
    for url in ("file:site/passwd.html", "file:site/sub/leak.html", "file:docs/named.html"):
        r = by_url[url]
        assert r["path"] is None and r["sha256"] is None and r["bytes"] == 0
        assert url[5:] in r["error"] and "outside" in r["error"]
        assert "/etc/passwd" not in r["error"] and str(outside) not in r["error"]
    recorded = (tmp_path / "raw" / "manifest.jsonl").read_text()
    pages = "".join(p.read_text() for p in (tmp_path / "raw" / "pages").iterdir())
    for leaked in ("OUTSIDE-SECRET-CONTENT", "OUTSIDE-FOLDER-CONTENT", "root:"):
        assert leaked not in recorded and leaked not in pages


def test_symlinked_robots_txt_outside_is_ignored(tmp_path):
    (tmp_path / "site").mkdir()
    (tmp_path / "rules.txt").write_text("User-agent: *\nDisallow: /\n")
    (tmp_path / "site" / "robots.txt").symlink_to(tmp_path / "rules.txt")
    (tmp_path / "site" / "index.html").write_bytes(page("Home"))
    by_url, _, _ = run_scrape(["site"], config(), tmp_path)
    assert by_url["file:site/index.html"]["status"] == "ok"


# --------------------------------------------------------------------------- credentials

class AuthSite:
    """/page.html needs basic auth user:s3cr3tpass and ?token=TOPSECRET123; it links to a
    same-host page with a signature; /redir's Location carries a token; /missing is 404."""

    USER, PASSWORD, TOKEN = "user", "s3cr3tpass", "TOPSECRET123"

    def __init__(self):
        self.requests: list[tuple[str, dict, str | None]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                parts = urlsplit(self.path)
                query = parse_qs(parts.query)
                auth = self.headers.get("Authorization")
                owner.requests.append((parts.path, query, auth))
                good = "Basic " + base64.b64encode(b"user:s3cr3tpass").decode()
                if parts.path == "/robots.txt":
                    return self._send(200, b"User-agent: *\nAllow: /\n", "text/plain")
                if parts.path == "/page.html":
                    if auth != good or query.get("token") != [owner.TOKEN]:
                        return self._send(401, b"who are you", "text/plain")
                    return self._send(200, page("Private page", "/next.html?sig=SIGVALUE98765&x=1"))
                if parts.path == "/next.html":
                    return self._send(200, page("Next"))
                if parts.path == "/redir":
                    self.send_response(302)
                    self.send_header("Location", "/landing.html?access_token=LOCATIONTOKEN55&y=2")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                if parts.path == "/landing.html":
                    return self._send(200, page("Landing"))
                return self._send(404, b"not found", "text/plain")

            def _send(self, code, body, ctype="text/html"):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


SECRETS = ("s3cr3tpass", "TOPSECRET123", "APIKEY0000042", "SIGVALUE98765", "LOCATIONTOKEN55",
           "REFUSEDSECRET7", "AUTHSECRET777")


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_credentials_are_sent_but_never_recorded_or_logged(tmp_path, caplog):
    srv = AuthSite()
    dead = closed_port()
    base = f"http://127.0.0.1:{srv.port}"
    cred = f"http://user:s3cr3tpass@127.0.0.1:{srv.port}"
    sources = [
        f"{cred}/page.html?token=TOPSECRET123&id=7",
        f"{cred}/missing?API_KEY=APIKEY0000042&lang=pt",
        f"{base}/redir?auth=AUTHSECRET777",
        f"http://user:s3cr3tpass@127.0.0.1:{dead}/x.html?token=REFUSEDSECRET7&id=1",
        "http://user:s3cr3tpass@[bad/?token=TOPSECRET123",
    ]
    caplog.set_level(logging.DEBUG, logger="policytune")
    try:
        cfg = config(crawl=True, max_depth=1, retries=1)
        by_url, stats, rows = run_scrape(sources, cfg, tmp_path)
        no_robots = config(respect_robots=False, retries=0)
        dead_rec, _ = Fetcher(no_robots, session_for(no_robots)).fetch(sources[3])
    finally:
        srv.stop()

    # the server got the credentials: basic auth and the token, also on the crawled page
    got = {path: (q, auth) for path, q, auth in srv.requests}
    assert got["/page.html"][0] == {"token": ["TOPSECRET123"], "id": ["7"]}
    assert base64.b64decode(got["/page.html"][1].split()[1]) == b"user:s3cr3tpass"
    assert got["/next.html"][0]["sig"] == ["SIGVALUE98765"] and got["/next.html"][1]
    assert got["/landing.html"][0]["access_token"] == ["LOCATIONTOKEN55"]

    ok = by_url[f"{base}/page.html?id=7"]
    assert ok["status"] == "ok" and ok["final_url"] == f"{base}/page.html?id=7"
    assert by_url[f"{base}/next.html?x=1"]["status"] == "ok"
    assert by_url[f"{base}/missing?lang=pt"]["status"] == "http_404"
    redir = by_url[f"{base}/redir"]
    assert redir["status"] == "ok" and redir["final_url"] == f"{base}/landing.html?y=2"
    refused = by_url[f"http://127.0.0.1:{dead}/x.html?id=1"]
    assert refused["status"] == "connection_error" and dead_rec["status"] == "connection_error"
    assert "url: /x.html?token=[redacted]&id=1" in dead_rec["error"]  # requests quotes the URL
    assert "robots.txt" in refused["error"]
    assert any(r["status"] == "invalid_url" for r in rows)

    stats_path = tmp_path / "stats" / "scrape.json"
    recorded = {
        "manifest": (tmp_path / "raw" / "manifest.jsonl").read_text(),
        "stats": stats_path.read_text(),
        "page names": " ".join(p.name for p in (tmp_path / "raw" / "pages").iterdir()),
        "log": caplog.text,
        "failure summary": failure_summary(rows, stats, cfg),
        "direct fetch": json.dumps(dead_rec),
    }
    assert f"robots.txt for {base} loaded" in caplog.text  # debug lines were captured
    assert "missing?lang=pt: http_404" in caplog.text
    for where, text in recorded.items():
        for secret in SECRETS:
            assert secret not in text, (where, secret)
    assert "id=7" in recorded["manifest"] and "lang=pt" in recorded["manifest"]


def test_redaction_helpers():
    keys = ScrapeConfig().secret_query_keys
    url = ("https://bob:p%40ss@h.test/a?X-Amz-Signature=ABCDEF&keep=1&Token=T0KEN&sig&"
           "x-goog-signature=GOOG&page=2#frag")
    assert redact_url(url, keys) == "https://h.test/a?keep=1&page=2#frag"  # bare 'sig' too
    assert redact_url("http://h.test/a?keep=1", keys) == "http://h.test/a?keep=1"
    assert url_secrets(url, keys) >= {"p%40ss", "p@ss", "ABCDEF", "T0KEN", "GOOG"}
    msg = ("HTTPSConnectionPool(host='h.test'): Max retries exceeded with url: "
           "/a?X-Amz-Signature=ABCDEF&keep=1 (https://bob:p%40ss@h.test/ said p@ss)")
    out = scrub(msg, url_secrets(url, keys), keys)
    for secret in ("ABCDEF", "p%40ss", "p@ss", "bob:"):
        assert secret not in out
    assert "keep=1" in out and "h.test" in out
    # custom keys, case-insensitive
    assert redact_url("http://h/x?SESSION=1&a=2", ["session"]) == "http://h/x?a=2"
