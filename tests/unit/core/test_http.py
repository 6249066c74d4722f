"""policytune.core.http: Retry-After in both forms, and the per-request total deadline and byte
cap of bounded_client (a loopback server the test starts and stops)."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policytune.core.http import bounded, bounded_client, current_budget, parse_retry_after
from policytune.corpus import fetch


def test_parse_retry_after_seconds_and_http_date():
    now = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
    assert parse_retry_after("7", now) == 7.0 and parse_retry_after(" 2.5 ", now) == 2.5
    assert parse_retry_after(format_datetime(now + timedelta(seconds=90), usegmt=True), now) == 90
    assert parse_retry_after("Wed, 01 May 2024 12:01:00 GMT", now) == 60
    assert parse_retry_after(format_datetime(now - timedelta(days=1), usegmt=True), now) == 0
    for junk in ("soon", "", "-5", "1e3", "Wed, 99 Foo 2024", None):
        assert parse_retry_after(junk, now) is None
    assert fetch.parse_retry_after is parse_retry_after  # written once, used by the scraper too


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(max_size=40), st.from_regex(r"[A-Z][a-z]{2}, \d{1,2} [A-Z][a-z]{2} \d{1,6} \d\d:\d\d:\d\d [A-Z+\-0-9]{1,5}")))
def test_parse_retry_after_never_raises(value):
    got = parse_retry_after(value)
    assert got is None or got >= 0


# --------------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, *a):
        pass

    def do_GET(self):
        srv = self.server
        if self.path == "/trickle":  # status line and all, 1 byte every 0.25 s
            data = b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\n" + b"x" * 40
            for byte in data:
                try:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                except OSError:
                    break
                if srv.stopping.wait(0.25):
                    break
            self.close_connection = True
            return
        body = b"y" * (1 << 20) if self.path == "/big" else b"ok"
        if self.path == "/slow":
            srv.stopping.wait(0.6)
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:
            pass


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads, httpd.block_on_close = True, False
    httpd.stopping = threading.Event()
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.stopping.set()
    httpd.shutdown()
    httpd.server_close()
    t.join(5)


def test_total_deadline_ends_a_trickled_reply(server):
    """Each byte comes well within the 2 s per-read timeout; the 1 s total ends the request."""
    client = bounded_client(timeout=2.0)
    t0 = time.monotonic()
    with pytest.raises(httpx2.TimeoutException):
        with bounded(1.0) as budget:
            client.get(f"{server}/trickle")
    assert time.monotonic() - t0 < 1.6 and budget.expired and not budget.too_large
    assert current_budget() is None
    # the same client, outside a bounded block, is an ordinary client (and reuses nothing broken)
    assert client.get(f"{server}/ok").text == "ok"
    client.close()


def test_byte_cap_ends_a_big_reply(server):
    client = bounded_client()
    with pytest.raises(httpx2.ReadError, match="larger than 100000 bytes"):
        with bounded(10.0, max_bytes=100_000) as budget:
            client.get(f"{server}/big")
    assert budget.too_large and not budget.expired and budget.received > 100_000
    with bounded(10.0, max_bytes=2 << 20) as budget:
        assert len(client.get(f"{server}/big").content) == 1 << 20
    assert not budget.too_large
    client.close()


def test_budgets_are_per_thread(server):
    """A tight budget on one thread does not touch another thread's request on the same client."""
    client = bounded_client()
    got: dict = {}

    def unbounded():
        got["other"] = client.get(f"{server}/slow").text

    t = threading.Thread(target=unbounded)
    t.start()
    with pytest.raises(httpx2.TimeoutException):
        with bounded(0.2):
            client.get(f"{server}/slow")
    t.join(5)
    assert got["other"] == "ok"
    client.close()
