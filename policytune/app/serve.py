"""serve: a local web app and OpenAI-compatible API over the base and the fine-tuned model.

    python -m policytune.app.serve          # http://127.0.0.1:8000/ (models/student + models/adapter)
    policytune serve --port 8080 --base     # base model only
    curl -s 127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
         -d '{"model": "finetuned", "messages": [{"role": "user", "content": "Who approves leave?"}]}'

Endpoints (standard library ``http.server`` only, bound to 127.0.0.1 unless --host says otherwise)
  GET  /                     one HTML page (inline JS, no CDN, works offline): a question answered by
                             base and fine-tuned side by side, both streamed, the retrieved sources
                             (title, link) under each answer. ``/?q=...&rag=1&max_tokens=64`` asks at once.
  GET  /v1/models            the variants served: "base", plus "finetuned" when an adapter is loaded
  GET  /healthz              {"status": "ok", "active", "waiting", "stats"} (engine counters)
  POST /v1/chat/completions  OpenAI chat completions, streamed as server-sent events or not

Request body: a JSON object (``Content-Type: application/json``) of at most --max-body-bytes with
  messages     required: [{"role": "system"|"user"|"assistant", "content": str or [{"type": "text",
               "text": str}]}], at most --max-messages of them; a system message only first (it
               replaces params.yaml's system prompt); the last message from the user. Oldest turns
               are dropped to fit the context (O(log n) chat-template renders, see Chatbot._fit).
  model        "base" | "finetuned" (default: the model of the evaluate stage's best variant by fact
               recall in metrics/eval.json when it is served; else "finetuned" when an adapter is
               loaded, else "base")
  max_tokens   1..--max-tokens-limit (or max_completion_tokens; default --max-new-tokens)
  temperature  0..2 (default 0 = greedy; below 1e-3 it is greedy too, since dividing the logits by
               e.g. 1e-300 would give inf/NaN);  top_p  (0, 1] (nucleus sampling; default 1)
  seed         int from -2**63 to 2**63-1 (sampling);  n  1 only
  stream       bool; with stream_options {"include_usage": true} a last chunk carries the usage
  rag          our extension, bool (default: whether the best variant uses retrieval, when this
               server has RAG): ground the answer in the top-k chunks of data/chunks.jsonl; the
               response (the first chunk when streaming) then has "sources": [{chunk_id, title, url,
               score, text}]
  Checked, then ignored, since common OpenAI clients send them: user (str), presence_penalty and
  frequency_penalty (-2..2), metadata (object), store (bool). Any other field is a 400, so a typo
  is never silently ignored.
Non-streaming answers are the standard ``chat.completion`` JSON (choices[0].message.content,
finish_reason "stop"|"length", usage). Streaming answers are ``text/event-stream`` events
``data: {chat.completion.chunk}`` (first the role, then content deltas, then the finish_reason)
ending with ``data: [DONE]``. Errors are ``{"error": {"message", "type", "param", "code"}}`` with
400 (invalid request), 403 (Host or Origin refused), 404 (path, model), 405, 411/413 (body length),
415 (not application/json), 503 (queue full; Retry-After) or 500 (generation failed, or any
unexpected error in the handler: always a JSON answer, never a dropped connection).

Browsers. Every request's ``Host`` must name the server: the bound address, ``localhost``,
``127.0.0.1`` or ``[::1]`` (with any port), or an --allow-host name; when bound to a wildcard address
(0.0.0.0, ::) also this machine's host names and any IP literal. So a page on another site whose
name was re-pointed at 127.0.0.1 (DNS rebinding) gets 403, not the API. A POST must be
``application/json`` (a cross-origin ``fetch`` can send text/plain or a form without asking the
server first, never application/json) and, when it carries an ``Origin``, come from the server's
own origin (the page it serves); anything else is refused before the body is parsed.

Concurrency. One thread per connection (ThreadingHTTPServer) parses, validates and renders the
prompt; the models, loaded once at start-up, are run only by the engine's worker thread
(:mod:`policytune.lm.engine`: continuous batching, up to --max-batch answers decode together, base and
fine-tuned rows in the same batch; a row whose sampling fails ends only its own answer). The
listen backlog is --backlog (128: a burst of 50 clients at once is accepted, where the standard
library's 5 reset a third of them). A request that finds --max-waiting others queued gets 503 at
once. Each answer flows to its handler through its own queue, so a client that reads slowly or not
at all blocks only its own handler thread (until --client-timeout). The handler checks every
quarter second whether its client is still connected (while the prompt is built, while the answer
waits in the queue, while it is generated, streamed or not): a client that went away has its
answer cancelled (it leaves the batch at the next decode step, or never enters it).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import math
import os
import queue
import select
import socket
import sys
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit

from policytune.app.chat import (Chatbot, ChatbotError, PromptCancelled, add_model_args, defaults_from_params,
                                 resolve_variant)
from policytune.app.page import PAGE
from policytune.core.progress import get_logger
from policytune.lm.engine import EngineBusy, EngineClosed, InvalidRequest, Reply

log = get_logger("serve")

HONORED_FIELDS = ("model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "seed",
                  "n", "stream", "stream_options", "rag")
IGNORED_FIELDS = ("user", "presence_penalty", "frequency_penalty", "metadata", "store")
SEED_RANGE = (-(1 << 63), (1 << 63) - 1)   # OpenAI's seed is an int64
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARD_HOSTS = ("", "0.0.0.0", "::")
ROLES = ("system", "user", "assistant")
ROUTES = {"/": "GET", "/index.html": "GET", "/favicon.ico": "GET", "/v1/models": "GET", "/healthz": "GET",
          "/v1/chat/completions": "POST"}
DRAIN_LIMIT = 16 << 20  # an oversized body up to this size is read and discarded, so the 413 arrives


@dataclass
class ServeConfig:
    max_body_bytes: int = 1 << 20
    max_tokens_default: int = 256
    max_tokens_limit: int = 1024
    client_timeout_s: float = 120.0   # a client that neither sends nor reads for this long is dropped
    max_messages: int = 1024          # messages per request
    backlog: int = 128                # listen() backlog: connections the kernel holds before accept
    allow_hosts: tuple = ()           # Host names accepted besides the bound address and loopback
    poll_s: float = 0.25              # how often a handler checks that its client is still there
    default_model: Optional[str] = None  # a request without "model" (None: finetuned when loaded, else base)
    default_rag: bool = False         # a request without "rag"


class ApiError(Exception):
    """An error response: HTTP status + OpenAI-style error object."""

    def __init__(self, status: int, message: str, *, param: Optional[str] = None, code: Optional[str] = None,
                 type: str = "invalid_request_error", headers: Optional[dict] = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# ---------------------------------------------------------------------------------------------
# request validation (pure: bytes in, ChatRequest or ApiError out)
# ---------------------------------------------------------------------------------------------

@dataclass
class ChatRequest:
    model: str
    messages: list[dict]
    max_tokens: int
    temperature: float = 0.0
    seed: Optional[int] = None
    stream: bool = False
    include_usage: bool = False
    rag: bool = False
    top_p: float = 1.0


def _invalid(message: str, param: Optional[str] = None, code: Optional[str] = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _number(data: dict, key: str, low: float, high: float, default: float, *, low_open: bool = False) -> float:
    """data[key] as a float in [low, high] ((low, high] with ``low_open``), ``default`` when absent."""
    v = data.get(key)
    if v is None:
        return default
    if not _is_number(v) or not (low < v if low_open else low <= v) or not v <= high:
        span = f"greater than {low:g} and at most {high:g}" if low_open else f"from {low:g} to {high:g}"
        raise _invalid(f"{key} must be a number {span}; got {v!r}", key)
    return float(v)


def _bool(data: dict, key: str, default: bool = False) -> bool:
    v = data.get(key)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise _invalid(f"{key} must be true or false, got {v!r}", key)
    return v


def _content(m: dict, where: str) -> str:
    c = m.get("content")
    if isinstance(c, list):  # OpenAI content parts: only text parts here
        if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in c):
            raise _invalid(f"{where}.content parts must be {{\"type\": \"text\", \"text\": str}} (text only)",
                           "messages")
        c = "".join(p["text"] for p in c)
    if not isinstance(c, str):
        raise _invalid(f"{where}.content must be a string", "messages")
    return c


def parse_messages(raw, max_messages: Optional[int] = None) -> list[dict]:
    if not isinstance(raw, list) or not raw:
        raise _invalid("messages must be a non-empty list of {role, content} objects", "messages")
    if max_messages is not None and len(raw) > max_messages:
        raise _invalid(f"messages has {len(raw)} entries; the limit is {max_messages} (--max-messages)",
                       "messages", "too_many_messages")
    out = []
    for i, m in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise _invalid(f"{where} must be an object with role and content", "messages")
        extra = sorted(set(m) - {"role", "content", "name"})
        if extra:
            raise _invalid(f"{where} has unsupported field(s): {', '.join(extra)}", "messages")
        role = m.get("role")
        if role not in ROLES:
            raise _invalid(f"{where}.role must be one of {', '.join(ROLES)}; got {role!r}", "messages")
        if role == "system" and i > 0:
            raise _invalid(f"{where}: a system message may only come first", "messages")
        out.append({"role": role, "content": _content(m, where)})
    if out[-1]["role"] != "user":
        raise _invalid("the last message must have role user (the question to answer)", "messages")
    if not out[-1]["content"].strip():
        raise _invalid("the last user message is empty", "messages")
    return out


def parse_chat_request(body: bytes, *, models: list[str], config: ServeConfig) -> ChatRequest:
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise _invalid(f"request body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise _invalid("request body must be a JSON object")
    unknown = sorted(set(data) - set(HONORED_FIELDS) - set(IGNORED_FIELDS))
    if unknown:
        raise _invalid(f"unknown field(s): {', '.join(unknown)}. Supported: {', '.join(HONORED_FIELDS)}; "
                       f"accepted and ignored: {', '.join(IGNORED_FIELDS)}", unknown[0], "unknown_field")
    model = data.get("model") or (config.default_model if config.default_model in models else models[-1])
    if model not in models:
        raise ApiError(404, f"model {model!r} is not served here; choose one of: {', '.join(models)}"
                       + ("" if "finetuned" in models else " (the server runs the base model only)"),
                       param="model", code="model_not_found")
    messages = parse_messages(data.get("messages"), config.max_messages)
    if data.get("max_tokens") is not None and data.get("max_completion_tokens") is not None:
        raise _invalid("give max_tokens or max_completion_tokens, not both", "max_tokens")
    key = "max_completion_tokens" if data.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = data.get(key)
    if max_tokens is None:
        max_tokens = config.max_tokens_default
    elif not _is_int(max_tokens) or not 1 <= max_tokens <= config.max_tokens_limit:
        raise _invalid(f"{key} must be an integer from 1 to {config.max_tokens_limit}; got {max_tokens!r}", key)
    temperature = _number(data, "temperature", 0, 2, 0.0)
    top_p = _number(data, "top_p", 0, 1, 1.0, low_open=True)
    seed = data.get("seed")
    if seed is not None and not (_is_int(seed) and SEED_RANGE[0] <= seed <= SEED_RANGE[1]):
        raise _invalid(f"seed must be an integer from {SEED_RANGE[0]} to {SEED_RANGE[1]}; got {seed!r}", "seed")
    for key in ("presence_penalty", "frequency_penalty"):  # checked, not applied
        _number(data, key, -2, 2, 0.0)
    if data.get("user") is not None and not isinstance(data["user"], str):
        raise _invalid(f"user must be a string; got {data['user']!r}", "user")
    if data.get("metadata") is not None and not isinstance(data["metadata"], dict):
        raise _invalid("metadata must be an object", "metadata")
    _bool(data, "store")
    n = data.get("n")
    if n is not None and n != 1:
        raise _invalid("n must be 1 (one answer per request)", "n")
    stream = _bool(data, "stream")
    options = data.get("stream_options")
    include_usage = False
    if options is not None:
        if not stream:
            raise _invalid("stream_options is only allowed with stream: true", "stream_options")
        if not isinstance(options, dict) or set(options) - {"include_usage"}:
            raise _invalid('stream_options must be {"include_usage": bool}', "stream_options")
        include_usage = _bool(options, "include_usage")
    return ChatRequest(model, messages, max_tokens, temperature, seed, stream, include_usage,
                       _bool(data, "rag", config.default_rag), top_p)


# ---------------------------------------------------------------------------------------------
# Host and Origin (DNS rebinding, cross-site requests)
# ---------------------------------------------------------------------------------------------

def split_host(value: str) -> Optional[str]:
    """The name in a Host header value ("name", "name:port", "[v6]:port"), lower-case, without a
    trailing dot; None when it is malformed."""
    v = value.strip().lower()
    if v.startswith("["):
        end = v.find("]")
        name, rest = v[1:end], v[end + 1:]
        if end < 0 or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            return None
    else:
        name, _, port = v.partition(":")
        if port and not port.isdigit():
            return None
    name = name.rstrip(".")
    return name or None


def is_ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def allowed_hosts(bind_host: str, extra: tuple = ()) -> tuple[frozenset, bool]:
    """(names a Host header may carry, whether any IP literal is fine too): the bound address,
    loopback names and ``extra``; for a wildcard bind also this machine's names and every IP."""
    names = {n.lower().rstrip(".") for n in (*LOOPBACK_NAMES, bind_host, *extra) if n}
    wildcard = bind_host in WILDCARD_HOSTS
    if wildcard:
        names |= {n.lower() for n in (socket.gethostname(), socket.getfqdn()) if n}
    return frozenset(names), wildcard


def host_ok(value: Optional[str], names: frozenset, any_ip: bool) -> bool:
    name = split_host(value) if value is not None else None
    return name is not None and (name in names or (any_ip and is_ip_literal(name)))


def same_origin(origin: str, host: Optional[str]) -> bool:
    """Whether an Origin header is this server's own origin (http(s)://<the Host header>)."""
    o = urlsplit(origin.strip())
    return (host is not None and o.scheme in ("http", "https") and not o.path.strip("/")
            and o.netloc.lower() == host.strip().lower())


# ---------------------------------------------------------------------------------------------
# responses
# ---------------------------------------------------------------------------------------------

def usage(reply: Reply) -> dict:
    return {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens,
            "total_tokens": reply.prompt_tokens + reply.completion_tokens}


def completion(cid: str, created: int, model: str, text: str, reply: Reply, sources: Optional[list]) -> dict:
    body = {"id": cid, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": reply.finish_reason}],
            "usage": usage(reply)}
    if sources is not None:
        body["sources"] = sources
    return body


def chunk(cid: str, created: int, model: str, delta: dict, finish_reason: Optional[str] = None) -> dict:
    return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}


class Handler(BaseHTTPRequestHandler):
    server: "ChatServer"
    server_version = "policytune-serve"
    _responded = False   # a status line went out for the current request
    _body_read = False   # the request body was read (or drained, or found too large to drain)

    def setup(self) -> None:
        self.timeout = self.server.config.client_timeout_s  # socket timeout for reads and writes
        super().setup()

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the base class's name)
        log.debug("%s %s", self.address_string(), format % args)

    def handle_one_request(self) -> None:
        """The standard loop, with a net: any unexpected exception becomes a JSON 500 (when no
        response was started yet) instead of a dropped connection."""
        self._responded = self._body_read = False
        try:
            super().handle_one_request()
        except OSError as e:  # the client vanished (reset, broken pipe, timeout): nothing to tell it
            log.info("connection from %s ended: %s", self.client_address[0], e)
            self.close_connection = True
        except Exception as e:
            log.exception("unexpected error in %s %s", self.command, self.path)
            self.close_connection = True
            if not self._responded:
                self._error(ApiError(500, f"internal error ({type(e).__name__}); see the server log",
                                     type="server_error", code="internal_error"))

    def send_response(self, code: int, message: Optional[str] = None) -> None:
        self._responded = True
        super().send_response(code, message)

    def send_error(self, code: int, message: Optional[str] = None, explain: Optional[str] = None) -> None:
        """The standard library's own errors (bad request line, header too large, unsupported
        method...) as JSON error objects too."""
        self.close_connection = True
        short = self.responses.get(code, ("error", ""))[0]
        body = ApiError(code, message or short, type="invalid_request_error" if code < 500 else "server_error",
                        code=short.lower().replace(" ", "_")).body()
        data = json.dumps(body).encode("utf-8")
        try:
            self.send_response(code, message)
            self.send_header("Content-Type", "application/json")
            self.send_header("Connection", "close")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD" and code >= 200 and code not in (204, 304):
                self.wfile.write(data)
        except OSError:
            pass

    # ---- Host, Origin, Content-Type

    def _check_host(self) -> None:
        """403 unless the Host header names this server (DNS rebinding: a foreign name pointed at us)."""
        host = self.headers.get("Host")
        if host is None and self.request_version == "HTTP/1.0":
            return  # an HTTP/1.0 client without Host: not a browser
        names, any_ip = self.server.host_names
        if not host_ok(host, names, any_ip):
            raise ApiError(403, f"Host {host!r} is not served here: use {self.server.url} (or localhost); "
                           "start with --allow-host NAME to accept another name", code="host_not_allowed",
                           type="permission_error")

    def _check_post(self) -> None:
        """403 for a foreign Origin, 415 unless the body is declared application/json."""
        origin = self.headers.get("Origin")
        if origin is not None and not same_origin(origin, self.headers.get("Host")):
            raise ApiError(403, f"cross-origin requests are refused (Origin {origin!r}); "
                           "call the API from its own page or without a browser", code="origin_not_allowed",
                           type="permission_error")
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise ApiError(415, f"Content-Type must be application/json; got {ctype or 'none'!r}",
                           code="unsupported_media_type")

    def _client_gone(self) -> bool:
        """Whether the client closed its end (readable with nothing to read) or the socket broke.
        poll(), not select(): select fails for descriptors above 1023 (a busy server has them)."""
        try:
            if hasattr(select, "poll"):
                p = select.poll()
                p.register(self.connection, select.POLLIN | select.POLLPRI)
                events = p.poll(0)
                if not events:
                    return False
                if events[0][1] & (select.POLLERR | select.POLLNVAL):
                    return True
            elif not select.select([self.connection], [], [], 0)[0]:
                return False
            return self.connection.recv(1, socket.MSG_PEEK) == b""  # readable: does not block
        except (OSError, ValueError):
            return True

    # ---- routing

    def _route(self, method: str) -> Optional[str]:
        path = urlsplit(self.path).path
        allowed = ROUTES.get(path)
        if allowed is None:
            self._error(ApiError(404, f"no such endpoint: {method} {path}", code="not_found"))
        elif allowed != method:
            self._error(ApiError(405, f"{path} accepts {allowed} only", code="method_not_allowed",
                                 headers={"Allow": allowed}))
        else:
            return path
        return None

    def do_GET(self) -> None:
        try:
            self._check_host()
        except ApiError as e:
            self._error(e)
            return
        path = self._route("GET")
        if path in ("/", "/index.html"):
            self._send(200, PAGE.encode("utf-8"), "text/html; charset=utf-8")
        elif path == "/favicon.ico":  # browsers ask; an empty answer keeps the log quiet
            self._send(204, b"", "image/x-icon")
        elif path == "/v1/models":
            self._json(200, self.server.models_payload())
        elif path == "/healthz":
            engine = self.server.bot.engine
            self._json(200, {"status": "ok", "active": engine.active, "waiting": engine.waiting,
                             "stats": dict(engine.stats)})

    def do_POST(self) -> None:
        try:
            self._check_host()
            if self._route("POST") is None:
                self._discard_body()
                return
            self._check_post()
            req = parse_chat_request(self._read_body(), models=self.server.bot.models, config=self.server.config)
            self._chat(req)
        except ApiError as e:
            self._discard_body()
            self._error(e)

    def do_PUT(self) -> None:
        self._discard_body()
        try:
            self._check_host()
        except ApiError as e:
            self._error(e)
            return
        self._route(self.command)

    do_DELETE = do_PATCH = do_OPTIONS = do_PUT

    # ---- I/O helpers

    def _send(self, status: int, body: bytes, content_type: str, headers: Optional[dict] = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj: dict, headers: Optional[dict] = None) -> None:
        self._send(status, json.dumps(obj, ensure_ascii=False).encode("utf-8"), "application/json", headers)

    def _error(self, e: ApiError) -> None:
        log.info("%s %s -> %d %s", self.command, self.path, e.status, e.message)
        try:
            self._json(e.status, e.body(), e.headers)
        except OSError:
            pass  # the client is gone; nothing to tell it

    def _discard_body(self) -> None:
        """Read away a body that will not be used (closing on unread data resets the connection,
        and the client would never see the answer), up to DRAIN_LIMIT; then close."""
        self.close_connection = True
        if self._body_read or self.command in (None, "GET", "HEAD"):
            return
        self._body_read = True
        try:
            n = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            return
        if 0 < n <= DRAIN_LIMIT:
            while n > 0 and (got := self.rfile.read(min(n, 1 << 16))):
                n -= len(got)

    def _read_body(self) -> bytes:
        self._body_read = True
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise ApiError(411, "send the body with a Content-Length header (chunked encoding is not supported)")
        length = self.headers.get("Content-Length")
        if length is None:
            raise ApiError(411, "a Content-Length header is required")
        try:
            n = int(length)
            if n < 0:
                raise ValueError
        except ValueError:
            raise _invalid(f"bad Content-Length {length!r}") from None
        limit = self.server.config.max_body_bytes
        if n > limit:
            self.close_connection = True
            if n <= DRAIN_LIMIT:  # read it away: closing on unread data would reset the connection
                while n > 0 and (got := self.rfile.read(min(n, 1 << 16))):
                    n -= len(got)
            raise ApiError(413, f"request body is {length} bytes; the limit is {limit} (--max-body-bytes)",
                           code="body_too_large")
        return self.rfile.read(n)

    # ---- chat completions

    def _chat(self, req: ChatRequest) -> None:
        bot = self.server.bot
        try:
            reply, prompt = bot.ask(req.messages, finetuned=req.model == "finetuned", rag=req.rag,
                                    max_new_tokens=req.max_tokens, temperature=req.temperature, seed=req.seed,
                                    top_p=req.top_p, gone=self._client_gone)
        except ChatbotError as e:
            raise _invalid(str(e), "rag" if req.rag and bot.retriever is None else "messages") from None
        except InvalidRequest as e:
            raise _invalid(str(e)) from None
        except PromptCancelled:
            log.info("client %s went away while its prompt was built; nothing queued", self.address_string())
            self.close_connection = True
            return
        except EngineBusy as e:
            raise ApiError(503, str(e), type="server_busy", code="queue_full", headers={"Retry-After": "1"}) from None
        except EngineClosed as e:
            raise ApiError(503, str(e), type="server_busy", code="shutting_down") from None
        if prompt.dropped:
            log.info("dropped the %d oldest messages to fit the context", prompt.dropped)
        cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        sources = prompt.sources if req.rag else None
        if req.stream:
            self._stream(req, reply, cid, created, sources)
            return
        try:
            text = "".join(reply.pieces(self._client_gone, self.server.config.poll_s))
        except queue.Empty:
            reply.cancel()
            raise ApiError(500, "generation timed out", type="server_error", code="timeout") from None
        if reply.cancelled:
            log.info("client %s went away before its answer was ready; answer cancelled", self.address_string())
            self.close_connection = True
            return
        if reply.error:
            raise ApiError(500, reply.error, type="server_error", code="generation_failed")
        try:
            self._json(200, completion(cid, created, req.model, text, reply, sources))
        except OSError:
            log.info("client went away before its answer was sent")

    def _stream(self, req: ChatRequest, reply: Reply, cid: str, created: int, sources: Optional[list]) -> None:
        def event(obj) -> None:
            data = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)
            self.wfile.write(f"data: {data}\n\n".encode("utf-8"))

        self.close_connection = True
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream; charset=utf-8")
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Accel-Buffering", "no")
            self.end_headers()
            first = chunk(cid, created, req.model, {"role": "assistant", "content": ""})
            if sources is not None:
                first["sources"] = sources
            event(first)
            try:
                for text in reply.pieces(self._client_gone, self.server.config.poll_s):
                    event(chunk(cid, created, req.model, {"content": text}))
                if reply.cancelled:
                    log.info("client %s went away mid-stream; answer cancelled", self.address_string())
                    return
            except queue.Empty:
                reply.cancel()
                event(ApiError(500, "generation timed out", type="server_error", code="timeout").body())
            else:
                if reply.error:
                    event(ApiError(500, reply.error, type="server_error", code="generation_failed").body())
                else:
                    event(chunk(cid, created, req.model, {}, reply.finish_reason))
                    if req.include_usage:
                        event({**chunk(cid, created, req.model, {}), "choices": [], "usage": usage(reply)})
            event("[DONE]")
        except OSError as e:  # broken pipe, reset, or a client that stopped reading (socket timeout)
            reply.cancel()
            log.info("client %s went away mid-stream (%s); answer cancelled", self.address_string(),
                     type(e).__name__)
        except Exception as e:  # headers are out: end the stream with an error event, never silently
            reply.cancel()
            log.exception("unexpected error while streaming")
            try:
                event(ApiError(500, f"internal error ({type(e).__name__}); see the server log", type="server_error",
                               code="internal_error").body())
                event("[DONE]")
            except OSError:
                pass


class ChatServer(ThreadingHTTPServer):
    """ThreadingHTTPServer holding the chatbot (models loaded once) and the limits."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], bot: Chatbot, config: Optional[ServeConfig] = None):
        self.bot, self.config = bot, config or ServeConfig()
        self.created = int(time.time())
        self.request_queue_size = self.config.backlog  # listen() backlog (the standard library's is 5)
        self.host_names = allowed_hosts(address[0], tuple(self.config.allow_hosts))
        super().__init__(address, Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def models_payload(self) -> dict:
        info = self.bot.info
        desc = {"base": {"model_dir": info.get("model_dir")},
                "finetuned": {"model_dir": info.get("model_dir"), "adapter_dir": info.get("adapter_dir")}}
        return {"object": "list", "data": [
            {"id": m, "object": "model", "created": self.created, "owned_by": "policytune",
             **desc[m], "chat_template_sha": info.get("chat_template_sha"),
             "rag": self.bot.retriever is not None, "max_tokens_limit": self.config.max_tokens_limit,
             "default": m == (self.config.default_model if self.config.default_model in self.bot.models
                              else self.bot.models[-1]),
             "default_rag": bool(self.config.default_rag and self.bot.retriever is not None)}
            for m in self.bot.models]}

    def handle_error(self, request, client_address) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):  # a client that vanished mid-request: routine, not a crash
            log.info("connection from %s ended: %s", client_address[0], exc)
        else:
            log.exception("unexpected error serving %s", client_address[0])


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------

def main(argv: Optional[list[str]] = None, prog: Optional[str] = None) -> None:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(ap)
    d = ServeConfig()
    ap.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s, this machine only)")
    ap.add_argument("--port", type=int, default=8000, help="port (default: %(default)s; 0 = any free port)")
    ap.add_argument("--no-rag", action="store_true", help="do not load the encoder and chunks (faster start)")
    ap.add_argument("--max-batch", type=int, default=8, help="answers decoded together (default: %(default)s)")
    ap.add_argument("--max-waiting", type=int, default=16,
                    help="requests queued beyond the batch before 503 (default: %(default)s)")
    ap.add_argument("--max-tokens-limit", type=int, default=d.max_tokens_limit,
                    help="largest max_tokens a request may ask for (default: %(default)s)")
    ap.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes,
                    help="largest request body (default: %(default)s)")
    ap.add_argument("--client-timeout", type=float, default=d.client_timeout_s,
                    help="seconds a client may stall sending or reading (default: %(default)s)")
    ap.add_argument("--max-messages", type=int, default=d.max_messages,
                    help="messages a request may carry (default: %(default)s)")
    ap.add_argument("--backlog", type=int, default=d.backlog,
                    help="connections the kernel queues before they are accepted (default: %(default)s)")
    ap.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                    help="another name the Host header may carry (repeatable; default: the bound address and "
                         "loopback names only)")
    args = ap.parse_args(argv)
    if min(args.max_batch, args.max_waiting, args.max_tokens_limit, args.max_body_bytes, args.max_new_tokens,
           args.max_messages, args.backlog) < 1:
        ap.error("--max-batch, --max-waiting, --max-tokens-limit, --max-body-bytes, --max-new-tokens, "
                 "--max-messages and --backlog must be >= 1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    system_prompt, top_k, method = defaults_from_params(args.params)
    best_ft, best_rag, why = resolve_variant("best")
    rag = not args.no_rag and Path(args.encoder_dir).is_dir() and Path(args.chunks).is_file()
    try:
        bot = Chatbot.load(args.model_dir, None if args.base else args.adapter_dir, system_prompt=system_prompt,
                           encoder_dir=args.encoder_dir if rag else None, chunks_path=args.chunks if rag else None,
                           top_k=args.top_k or top_k, retriever_method=method, dtype=args.dtype,
                           context_tokens=args.context_tokens,
                           max_batch=args.max_batch, max_waiting=args.max_waiting)
    except ChatbotError as e:
        raise SystemExit(f"serve: {e}") from None
    if not rag:
        bot.rag_unavailable = ("RAG is off on this server (started with --no-rag)" if args.no_rag else
                               f"RAG is off on this server: {args.encoder_dir} or {args.chunks} is missing "
                               "(build them with `dvc repro`, or fetch them with `dvc pull`)")
        log.info("%s", bot.rag_unavailable)
    config = ServeConfig(max_body_bytes=args.max_body_bytes, max_tokens_default=args.max_new_tokens,
                         max_tokens_limit=args.max_tokens_limit, client_timeout_s=args.client_timeout,
                         max_messages=args.max_messages, backlog=args.backlog, allow_hosts=tuple(args.allow_host),
                         default_model="finetuned" if best_ft and not args.base else "base",
                         default_rag=best_rag and rag)
    try:
        server = ChatServer((args.host, args.port), bot, config)
    except OSError as e:
        bot.close()
        raise SystemExit(f"serve: cannot listen on {args.host}:{args.port}: {e}") from None
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s: reachable from other machines, with no authentication", args.host)
    default = config.default_model + ("_rag" if config.default_rag else "")
    print(f"serving {', '.join(bot.models)} on {server.url}/ (RAG {'on' if rag else 'off'}); a request that names "
          f"no model and no rag gets {default} ({why}); Ctrl-C stops", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        bot.close()


if __name__ == "__main__":
    main()
