"""A loopback server that answers chat requests the way a broken or hostile endpoint would.

It speaks both wire formats the API backends use, so the same misbehaviour can be aimed at
either:

- OpenAI-compatible: ``POST /<mode>/v1/chat/completions``
- Bedrock Converse:  ``POST /model/<mode>/converse``

Modes (the first path segment, or the model id for Converse):

==================  =====================================================================
``ok``              a normal reply (``echo:<last user message>``)
``trickle``         the whole response, status line included, one byte per second
``cut``             ``Content-Length`` says N, half of it is sent, the connection closes
``cut-nolength``    no ``Content-Length``; half a JSON body, then the connection closes
``huge``            a valid reply of ``huge_bytes`` (default 16 MiB), sent as fast as possible
``huge-nolength``   the same without ``Content-Length`` (the body ends when the connection closes)
``huge-error``      HTTP 500 with a body of ``huge_bytes``
``content-number``  the reply text is the number 42 (OpenAI: message.content; Converse: content)
``content-list``    OpenAI: content as a list of text parts (``a`` + ``b``); Converse: ``[{"text": "a"}, {"text": "b"}]``
``content-dict``    the reply text is a JSON object
``content-null``    the reply text is null
``no-choices``      OpenAI: ``"choices": []``; Converse: no ``output``
``usage-bad``       the token count is the string ``"many"``
``429-seconds``     the first request of the mode: 429 with ``Retry-After: 1``; then ``ok``
``429-date``        the first request: 429 with ``Retry-After`` as an HTTP-date 2 s ahead; then ``ok``
``503-then-ok``     the first request: 503; then ``ok``
``raw``             200 with ``server.raw`` as the body, verbatim (property tests set it)
==================  =====================================================================

``counts`` / ``times`` (arrival times, monotonic) are kept per mode, under ``converse:<mode>``
for Converse requests.

Bounded: 127.0.0.1 only, an ephemeral port, daemon handler threads; slow modes stop when the
client goes away, when the server stops, or after ``max_slow_s``. Use it as a context manager
(or call :meth:`stop`).
"""

from __future__ import annotations

import json
import threading
import time
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODES = ("ok", "trickle", "cut", "cut-nolength", "huge", "huge-nolength", "huge-error", "content-number", "content-list", "content-dict",
         "content-null", "no-choices", "usage-bad", "429-seconds", "429-date", "503-then-ok", "raw")


def _openai_reply(content, *, usage=None, model="hostile", choices=None) -> dict:
    return {"id": "x", "object": "chat.completion", "model": model,
            "choices": choices if choices is not None else
            [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
            "usage": usage if usage is not None else {"prompt_tokens": 3, "completion_tokens": 7, "total_tokens": 10}}


def _converse_reply(content, *, usage=None, output=True) -> dict:
    out = {"stopReason": "end_turn",
           "usage": usage if usage is not None else {"inputTokens": 3, "outputTokens": 5, "totalTokens": 8},
           "metrics": {"latencyMs": 1}}
    if output:
        out["output"] = {"message": {"role": "assistant", "content": content}}
    return out


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as separate writes: no 40 ms ACK stalls

    def log_message(self, *args):  # keep test output clean
        pass

    # -- plumbing ----------------------------------------------------------------------------

    def _write(self, data: bytes) -> bool:
        try:
            self.wfile.write(data)
            self.wfile.flush()
            return True
        except OSError:  # the client went away
            return False

    def _send(self, status: int, body: bytes, headers: dict | None = None, *, length: bool = True) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        if length:
            self.send_header("Content-Length", str(len(body)))
        else:
            self.send_header("Connection", "close")
            self.close_connection = True
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self._write(body)

    def _response_bytes(self, status: int, body: bytes) -> bytes:
        head = (f"HTTP/1.1 {status} OK\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        return head + body

    # -- the modes ---------------------------------------------------------------------------

    def do_POST(self):
        srv = self.server.owner
        n = int(self.headers.get("Content-Length") or 0)
        raw_req = self.rfile.read(n) if n else b""
        try:
            req = json.loads(raw_req or b"{}")
        except ValueError:
            req = {}
        parts = self.path.strip("/").split("/")
        converse = len(parts) == 3 and parts[0] == "model" and parts[2] == "converse"
        mode = parts[1] if converse else parts[0]
        key = f"converse:{mode}" if converse else mode  # counted apart: each API gets its own "first request"
        with srv.lock:
            k = srv.counts[key] = srv.counts.get(key, 0) + 1
            srv.times.setdefault(key, []).append(time.monotonic())
            srv.requests.append({"path": self.path, "mode": mode, "body": req,
                                 "auth": self.headers.get("Authorization")})
        if not converse and not self.path.endswith("/v1/chat/completions"):
            return self._send(404, b'{"error": {"message": "not found"}}')

        def reply(content=None, **kw) -> bytes:
            return json.dumps(_converse_reply(content, **kw) if converse else _openai_reply(content, **kw)).encode()

        msgs = req.get("messages") or [{}]
        last = msgs[-1].get("content") if isinstance(msgs[-1], dict) else ""
        if isinstance(last, list):  # Converse: [{"text": ...}]
            last = "".join(b.get("text", "") for b in last if isinstance(b, dict))
        text = f"echo:{last}"
        ok = reply([{"text": text}] if converse else text)

        if mode == "ok":
            return self._send(200, ok)
        if mode == "trickle":
            deadline = time.monotonic() + srv.max_slow_s
            for i, byte in enumerate(self._response_bytes(200, ok)):
                if srv.stopping.is_set() or time.monotonic() > deadline or not self._write(bytes([byte])):
                    break
                srv.stopping.wait(1.0)
            self.close_connection = True
            return None
        if mode == "cut":
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(ok)))
            self.end_headers()
            self._write(ok[: len(ok) // 2])
            self.close_connection = True
            return None
        if mode == "cut-nolength":
            return self._send(200, ok[: len(ok) // 2], length=False)
        if mode in ("huge", "huge-nolength", "huge-error"):
            filler = "x" * srv.huge_bytes
            body = reply([{"text": filler}] if converse else filler)
            self.send_response(500 if mode == "huge-error" else 200)
            self.send_header("Content-Type", "application/json")
            if mode == "huge-nolength":
                self.send_header("Connection", "close")
            else:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            for i in range(0, len(body), 1 << 16):
                if srv.stopping.is_set() or not self._write(body[i:i + (1 << 16)]):
                    break
            self.close_connection = True
            return None
        if mode == "content-number":
            return self._send(200, reply(42))
        if mode == "content-list":
            parts_ = [{"text": "a"}, {"text": "b"}] if converse else [{"type": "text", "text": "a"},
                                                                       {"type": "text", "text": "b"}]
            return self._send(200, reply(parts_))
        if mode == "content-dict":
            return self._send(200, reply({"text": "a"}))
        if mode == "content-null":
            return self._send(200, reply(None))
        if mode == "no-choices":
            return self._send(200, json.dumps(_converse_reply(None, output=False) if converse
                                              else _openai_reply(None, choices=[])).encode())
        if mode == "usage-bad":
            usage = ({"inputTokens": 3, "outputTokens": "many", "totalTokens": "lots"} if converse
                     else {"prompt_tokens": 3, "completion_tokens": "many", "total_tokens": "lots"})
            return self._send(200, reply([{"text": text}] if converse else text, usage=usage))
        if mode in ("429-seconds", "429-date") and k == 1:
            after = "1" if mode == "429-seconds" else formatdate(time.time() + 2, usegmt=True)
            err = {"message": "Too many requests"} if converse else {"error": {"message": "slow down"}}
            headers = {"Retry-After": after}
            if converse:
                headers["x-amzn-ErrorType"] = "ThrottlingException:http://internal.amazon.com/coral/"
            return self._send(429, json.dumps(err).encode(), headers)
        if mode == "503-then-ok" and k == 1:
            headers = {"x-amzn-ErrorType": "ServiceUnavailableException:"} if converse else {}
            return self._send(503, b'{"message": "busy"}', headers)
        if mode == "raw":
            return self._send(200, srv.raw)
        return self._send(200, ok)


class HostileServer:
    def __init__(self, *, huge_bytes: int = 16 << 20, max_slow_s: float = 30.0):
        self.huge_bytes, self.max_slow_s = huge_bytes, max_slow_s
        self.counts: dict[str, int] = {}
        self.times: dict[str, list[float]] = {}
        self.requests: list[dict] = []
        self.raw = b"{}"
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        self.httpd.owner = self
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def openai_url(self, mode: str) -> str:
        return f"{self.url}/{mode}/v1"

    def stop(self) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)

    def __enter__(self) -> "HostileServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
