"""policytune serve under abusive requests (issue 17): bounded sampling settings, one user's request never
fails another's, bursts answered (200 or 503, no resets), work cancelled when the client goes,
every error a JSON answer, and browsers kept out (Content-Type, Origin, Host: DNS rebinding).

In-process ChatServers on free 127.0.0.1 ports over the tiny model + a tiny LoRA adapter (no RAG:
test_serve.py covers it), stopped with shutdown(); every client has a timeout.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import socket
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from hypothesis import given, settings, strategies as st

from policytune.app.chat import Chatbot
from policytune.app.serve import (ApiError, ChatServer, ServeConfig, allowed_hosts, host_ok, parse_chat_request,
                                  same_origin, split_host)
from policytune.lm.chat_format import DEFAULT_SYSTEM_PROMPT
from policytune.lm.engine import MIN_TEMPERATURE, Engine
from tests.helpers.chat import post_chat, request, sse_events, tiny_adapter_dir, tiny_model_dir

QUESTION = "Who approves annual leave?"
CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def bot(request, tmp_path_factory) -> Chatbot:
    model_dir = tiny_model_dir(request.config, tmp_path_factory)
    adapter = tiny_adapter_dir(model_dir, tmp_path_factory.mktemp("adapter"))
    b = Chatbot.load(model_dir, adapter, system_prompt=DEFAULT_SYSTEM_PROMPT, max_batch=4, max_waiting=8)
    yield b
    b.close()


def start_server(bot: Chatbot, config: ServeConfig) -> ChatServer:
    server = ChatServer(("127.0.0.1", 0), bot, config)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def stop_server(server: ChatServer) -> None:
    server.shutdown()
    server.server_close()


CONFIG = ServeConfig(max_body_bytes=1 << 20, max_tokens_default=8, max_tokens_limit=2000, client_timeout_s=10,
                     max_messages=64)


@pytest.fixture(scope="module")
def server(bot):
    s = start_server(bot, CONFIG)
    yield s
    stop_server(s)


def ask(question: str = QUESTION, **kw) -> dict:
    return {"messages": [{"role": "user", "content": question}], **kw}


def stats(server) -> dict:
    return json.loads(request(server.url, "GET", "/healthz")[2])["stats"]


def wait_idle(server, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        h = json.loads(request(server.url, "GET", "/healthz")[2])
        if not h["active"] and not h["waiting"]:
            return h["stats"]
        assert time.monotonic() < deadline, f"engine still busy: {h}"
        time.sleep(0.05)


def answer(body: dict) -> str:
    return body["choices"][0]["message"]["content"]


def raw_post(server, body: dict, headers: str = "") -> socket.socket:
    data = json.dumps(body).encode()
    s = socket.create_connection(server.server_address, timeout=10)
    s.sendall(f"POST {CHAT} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{headers}"
              f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return s


# --------------------------------------------------------------------------------------------- sampling settings

@pytest.mark.parametrize("field, value, words", [
    ("seed", 2 ** 70, "seed must be an integer from -9223372036854775808"),
    ("seed", -(2 ** 63) - 1, "seed must be an integer"),
    ("seed", 1.5, "seed must be an integer"),
    ("top_p", 0, "top_p must be a number greater than 0 and at most 1"),
    ("top_p", 1.5, "top_p must be a number"),
    ("temperature", -0.1, "temperature must be a number from 0 to 2"),
    ("presence_penalty", 3, "presence_penalty must be a number from -2 to 2"),
    ("frequency_penalty", "high", "frequency_penalty must be a number"),
    ("user", 5, "user must be a string"),
    ("metadata", [1], "metadata must be an object"),
    ("store", "yes", "store must be true or false"),
])
def test_out_of_range_settings_get_a_json_400(server, field, value, words):
    status, err = post_chat(server.url, ask(max_tokens=2, **{field: value}))
    assert status == 400 and words in err["error"]["message"] and err["error"]["param"] == field, err


def test_non_finite_numbers_get_a_json_400(server):
    for raw in (b'{"messages": [{"role": "user", "content": "q"}], "temperature": NaN}',
                b'{"messages": [{"role": "user", "content": "q"}], "top_p": Infinity}'):
        status, _, body = request(server.url, "POST", CHAT, raw)
        assert status == 400 and "must be a number" in json.loads(body)["error"]["message"]


def test_extreme_but_valid_settings_are_answered(server):
    greedy = answer(post_chat(server.url, ask(max_tokens=10))[1])
    for kw in ({"temperature": 1e-300}, {"temperature": MIN_TEMPERATURE / 2, "seed": -(2 ** 63)},
               {"temperature": 2, "top_p": 1e-12, "seed": 2 ** 63 - 1}):
        status, body = post_chat(server.url, ask(max_tokens=10, **kw))
        assert status == 200 and answer(body) == greedy, (kw, body)  # all of them greedy in effect
    status, body = post_chat(server.url, ask(max_tokens=10, temperature=2, top_p=0.9, seed=3))
    assert status == 200 and body["usage"]["completion_tokens"] >= 1


JSONISH = st.recursive(st.none() | st.booleans() | st.integers(-(1 << 80), 1 << 80) | st.floats() | st.text(max_size=4),
                       lambda kids: st.lists(kids, max_size=2) | st.dictionaries(st.text(max_size=3), kids, max_size=2),
                       max_leaves=4)


@settings(max_examples=400, deadline=None)
@given(fields=st.dictionaries(st.sampled_from(["temperature", "top_p", "seed", "max_tokens", "n", "stream",
                                               "presence_penalty", "frequency_penalty", "user", "metadata",
                                               "store", "rag", "stream_options"]), JSONISH, max_size=5))
def test_any_settings_parse_to_safe_values_or_a_4xx(fields):
    body = json.dumps({"messages": [{"role": "user", "content": "q"}], **fields}).encode()
    try:
        req = parse_chat_request(body, models=["base", "finetuned"], config=CONFIG)
    except ApiError as e:
        assert e.status == 400
        return
    assert 0 <= req.temperature <= 2 and 0 < req.top_p <= 1 and 1 <= req.max_tokens <= CONFIG.max_tokens_limit
    assert req.seed is None or -(2 ** 63) <= req.seed < 2 ** 63


# --------------------------------------------------------------------------------------------- one user, one answer

def test_an_abusive_request_in_the_same_batch_leaves_the_normal_answer_identical(bot, server):
    """The 1e-300 request used to fail every answer of its batch (inf/NaN in the sampler)."""
    normal = ask(max_tokens=12)
    want = post_chat(server.url, normal)[1]
    engine = Engine(bot.model, bot.tokenizer, bot.engine.stop_ids, max_batch=4, max_waiting=4)
    s = start_server(bot.with_engine(engine), CONFIG)
    try:
        with ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(post_chat, s.url, body) for body in
                       (normal, ask("Hi", max_tokens=12, temperature=1e-300),
                        ask("Budget?", max_tokens=12, temperature=2.0, top_p=1e-12, seed=2 ** 63 - 1))]
            deadline = time.monotonic() + 20
            while engine.waiting < 3:  # all three queued before the engine starts: one batch
                assert time.monotonic() < deadline and not any(f.done() for f in futures)
                time.sleep(0.02)
            engine.start()
            results = [f.result(timeout=60) for f in futures]
    finally:
        stop_server(s)
        engine.close()
    assert engine.stats["peak_batch"] == 3
    assert [status for status, _ in results] == [200, 200, 200], results
    assert answer(results[0][1]) == answer(want) and results[0][1]["usage"] == want["usage"]


# --------------------------------------------------------------------------------------------- bursts

def test_a_burst_of_50_clients_gets_answers_or_503s_never_resets(server):
    n = 50
    gate = threading.Barrier(n)
    outcomes = [""] * n
    host, port = server.server_address[:2]

    def one(i: int) -> None:
        conn = http.client.HTTPConnection(host, port, timeout=60)
        try:
            gate.wait(30)
            conn.request("POST", CHAT, body=json.dumps(ask(f"{QUESTION} {i}", max_tokens=2)),
                         headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            r.read()
            outcomes[i] = str(r.status)
        except Exception as e:  # what the test counts: resets, dropped connections
            outcomes[i] = type(e).__name__
        finally:
            conn.close()

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(n)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(1.0, 90 - (time.monotonic() - t0)))
    counts = Counter(outcomes)
    assert set(counts) <= {"200", "503"}, counts
    assert counts["200"] >= 4 and time.monotonic() - t0 < 90, counts
    wait_idle(server)
    assert post_chat(server.url, ask(max_tokens=2))[0] == 200


def test_the_listen_backlog_is_sized_for_bursts(bot):
    s = ChatServer(("127.0.0.1", 0), bot)
    try:
        assert s.request_queue_size == 128  # the standard library's 5 reset 15-27 of 50 clients
    finally:
        s.server_close()


# --------------------------------------------------------------------------------------------- size limits

def test_message_count_is_capped(server):
    turns = []
    for i in range(40):
        turns += [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]
    status, err = post_chat(server.url, {"messages": turns + [{"role": "user", "content": QUESTION}]})
    assert status == 400 and err["error"]["code"] == "too_many_messages" and "limit is 64" in err["error"]["message"]


def test_a_long_history_is_trimmed_quickly_over_http(bot):
    s = start_server(bot, dataclasses.replace(CONFIG, max_messages=10_000))
    try:
        turns = []
        for i in range(2000):
            turns += [{"role": "user", "content": f"Question number {i} about the travel policy?"},
                      {"role": "assistant", "content": f"Answer number {i} about the travel policy."}]
        t0 = time.monotonic()
        status, body = post_chat(s.url, {"messages": turns + [{"role": "user", "content": QUESTION}],
                                         "max_tokens": 2}, timeout=60)
        assert status == 200 and body["usage"]["prompt_tokens"] > 1500, body
        assert time.monotonic() - t0 < 30  # the old loop: minutes (one render per dropped turn)
    finally:
        stop_server(s)


# --------------------------------------------------------------------------------------------- clients that go away

def test_a_non_streaming_client_that_goes_away_has_its_answer_cancelled(server):
    before = wait_idle(server)
    s = raw_post(server, ask(max_tokens=1900))
    deadline = time.monotonic() + 10
    while stats(server)["generated_tokens"] == before["generated_tokens"]:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    s.close()  # before the answer: nobody will read it
    after = wait_idle(server)
    assert after["cancelled"] == before["cancelled"] + 1
    assert after["generated_tokens"] - before["generated_tokens"] < 1900
    assert post_chat(server.url, ask(max_tokens=2))[0] == 200


def test_a_queued_client_that_goes_away_is_never_generated(bot):
    engine = Engine(bot.model, bot.tokenizer, bot.engine.stop_ids, max_batch=1, max_waiting=2)
    s = start_server(bot.with_engine(engine), CONFIG)
    try:
        sock = raw_post(s, ask(max_tokens=50, stream=True))
        deadline = time.monotonic() + 10
        while engine.waiting < 1:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        queued = engine._waiting.queue[0]
        sock.close()
        while not queued.cancelled:  # the handler notices within a poll interval
            assert time.monotonic() < deadline
            time.sleep(0.02)
        engine.start()
        queued.text()
    finally:
        stop_server(s)
        engine.close()
    assert queued.finish_reason == "cancelled" and engine.stats["generated_tokens"] == 0


# --------------------------------------------------------------------------------------------- JSON errors, always

def test_an_unexpected_error_in_the_handler_is_a_json_500(bot):
    broken = dataclasses.replace(bot)

    def ask_fails(*a, **kw):
        raise RuntimeError("boom")

    broken.ask = ask_fails
    s = start_server(broken, CONFIG)
    try:
        status, err = post_chat(s.url, ask(max_tokens=2))
        assert status == 500 and err["error"]["code"] == "internal_error" and "RuntimeError" in err["error"]["message"]
        s.models_payload = lambda: 1 / 0
        status, _, body = request(s.url, "GET", "/v1/models")
        assert status == 500 and "ZeroDivisionError" in json.loads(body)["error"]["message"]
        assert request(s.url, "GET", "/healthz")[0] == 200  # the server lives on
    finally:
        stop_server(s)


def test_an_unexpected_error_mid_stream_ends_the_stream_with_an_error_event(bot):
    class Failing:
        cancelled, error, finish_reason = False, None, None

        def pieces(self, *a, **kw):
            yield "partial"
            raise RuntimeError("lost the model")

        def cancel(self):
            self.cancelled = True

    broken = dataclasses.replace(bot)
    broken.ask = lambda *a, **kw: (Failing(), type("P", (), {"dropped": 0, "sources": []})())
    s = start_server(broken, CONFIG)
    try:
        status, _, raw = request(s.url, "POST", CHAT, ask(stream=True))
    finally:
        stop_server(s)
    events = sse_events(raw)
    assert status == 200 and events[-1] == "[DONE]"
    assert events[-2]["error"]["code"] == "internal_error"


@pytest.mark.parametrize("raw, status", [
    (b"BREW /pot HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 501),
    (b"GET /" + b"x" * 70_000 + b" HTTP/1.1\r\n\r\n", 414),
    # a request line the standard library cannot parse is answered as HTTP/0.9: the bare body
    (b"GARBAGE\r\n\r\n", "bad_request"),
    (b"GET / HTTP/1.1 extra\r\n\r\n", "bad_request"),
    (b"GET / HTTP/7.0\r\n\r\n", "http_version_not_supported"),
])
def test_the_standard_library_errors_are_json_too(server, raw, status):
    with socket.create_connection(server.server_address, timeout=10) as s:
        s.sendall(raw)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    if isinstance(status, str):
        assert json.loads(data)["error"]["code"] == status
        return
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.split()[1] == str(status).encode() and b"application/json" in head
    assert json.loads(body)["error"]["message"]


# --------------------------------------------------------------------------------------------- browsers

@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; b=x", None])
def test_post_requires_application_json(server, ctype):
    before = stats(server)["submitted"]
    headers = {} if ctype is None else {"Content-Type": ctype}
    body = json.dumps(ask(max_tokens=2))
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.putrequest("POST", CHAT)
        for k, v in {**headers, "Content-Length": str(len(body))}.items():
            conn.putheader(k, v)
        conn.endheaders(body.encode())
        r = conn.getresponse()
        status, err = r.status, json.loads(r.read())
    finally:
        conn.close()
    assert status == 415 and err["error"]["code"] == "unsupported_media_type"
    assert stats(server)["submitted"] == before  # nothing generated


def test_json_with_a_charset_is_fine(server):
    status, _ = post_chat(server.url, ask(max_tokens=2), headers={"Content-Type": "Application/JSON; charset=utf-8"})
    assert status == 200


@pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://127.0.0.1:1", "http://localhost",
                                    "file://", "http://127.0.0.1.evil.example"])
def test_a_foreign_origin_is_refused(server, origin):
    before = stats(server)["submitted"]
    status, err = post_chat(server.url, ask(max_tokens=2), headers={"Origin": origin})
    assert status == 403 and err["error"]["code"] == "origin_not_allowed"
    assert stats(server)["submitted"] == before


def test_the_own_origin_is_served(server):
    status, _ = post_chat(server.url, ask(max_tokens=2), headers={"Origin": server.url})
    assert status == 200


@pytest.mark.parametrize("host, ok", [
    ("127.0.0.1", True), ("127.0.0.1:9", True), ("localhost", True), ("LOCALHOST.:8000", True), ("[::1]:80", True),
    ("evil.example", False), ("evil.example:8000", False), ("127.0.0.1.nip.io", False),
    ("localhost.evil.example", False), ("", False), ("127.0.0.1:80:80", False), ("[::1", False),
    ("10.0.0.5", False),
])
def test_the_host_header_must_name_this_server(server, host, ok):
    before = stats(server)["submitted"]
    for method, path, body in (("GET", "/v1/models", None), ("POST", CHAT, ask(max_tokens=2))):
        status, _, data = request(server.url, method, path, body, headers={"Host": host})
        if ok:
            assert status == 200, (host, data)
        else:
            assert status == 403 and json.loads(data)["error"]["code"] == "host_not_allowed", (host, data)
    assert (stats(server)["submitted"] - before) == (1 if ok else 0)


DOMAIN = st.from_regex(r"[a-z0-9-]{1,12}(\.[a-z0-9-]{1,12}){0,3}\.?", fullmatch=True)


@given(name=DOMAIN, port=st.none() | st.integers(0, 65535))
def test_only_the_bound_and_loopback_names_pass(name, port):
    names, any_ip = allowed_hosts("127.0.0.1")
    value = name if port is None else f"{name}:{port}"
    assert host_ok(value, names, any_ip) == (name.rstrip(".") in ("localhost", "127.0.0.1"))
    assert split_host(value) == name.rstrip(".")


def test_wildcard_binds_and_extra_names():
    names, any_ip = allowed_hosts("0.0.0.0", ("chat.lan",))
    assert any_ip and host_ok("192.168.1.20:8000", names, any_ip) and host_ok("chat.lan", names, any_ip)
    assert not host_ok("evil.example", names, any_ip)
    names, any_ip = allowed_hosts("127.0.0.1")
    assert not any_ip and not host_ok("192.168.1.20", names, any_ip)
    assert same_origin("http://127.0.0.1:8000", "127.0.0.1:8000")
    assert not same_origin("http://127.0.0.1:8000/x", "127.0.0.1:8000") and not same_origin("null", "127.0.0.1:8000")


def test_a_request_that_names_nothing_gets_the_best_variant():
    """serve's defaults come from the evaluate stage's best variant (ServeConfig.default_*); a
    request's own model / rag always win."""
    body = json.dumps({"messages": [{"role": "user", "content": "Who approves leave?"}]}).encode()
    best = dataclasses.replace(CONFIG, default_model="base", default_rag=True)
    req = parse_chat_request(body, models=["base", "finetuned"], config=best)
    assert (req.model, req.rag) == ("base", True)
    req = parse_chat_request(body, models=["base", "finetuned"], config=CONFIG)
    assert (req.model, req.rag) == ("finetuned", False)  # no evaluation yet: fine-tuned, no retrieval
    own = json.dumps({"model": "finetuned", "rag": False,
                      "messages": [{"role": "user", "content": "Who approves leave?"}]}).encode()
    req = parse_chat_request(own, models=["base", "finetuned"], config=best)
    assert (req.model, req.rag) == ("finetuned", False)
