"""policytune serve (policytune/app/serve.py) on the tiny model + a tiny LoRA adapter, through real HTTP.

An in-process ChatServer on a free 127.0.0.1 port (stopped with shutdown()) serves the models loaded
once for the module. Covered: the OpenAI-compatible endpoint (plain and streamed, answers equal the
evaluate stage's greedy answers), RAG sources, request validation (4xx with a message), the
context limit, concurrency (4 clients at once, a stalled reader, a client that disconnects, a full
queue -> 503), and the page driven in headless Chromium.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from policytune.app.chat import Chatbot, ChatbotError
from policytune.app.serve import ChatServer, ServeConfig
from policytune.evaluation.answers import generate
from policytune.lm.chat_format import DEFAULT_SYSTEM_PROMPT, to_messages
from policytune.lm.engine import Engine
from tests.helpers.chat import Chromium, chunks_file, encoder_dir, post_chat, request, sse_events, \
    tiny_adapter_dir, tiny_model_dir

CHROMIUM = Path("/usr/bin/chromium")
QUESTION = "Who approves annual leave?"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tests share a 2-core machine with other work: keep torch to one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def bot(request, tmp_path_factory) -> Chatbot:
    model_dir = tiny_model_dir(request.config, tmp_path_factory)
    adapter = tiny_adapter_dir(model_dir, tmp_path_factory.mktemp("adapter"))
    chunks = chunks_file(tmp_path_factory.mktemp("data") / "chunks.jsonl")
    b = Chatbot.load(model_dir, adapter, system_prompt=DEFAULT_SYSTEM_PROMPT, encoder_dir=encoder_dir(),
                     chunks_path=chunks, top_k=2, max_batch=4, max_waiting=8)
    yield b
    b.close()


def start_server(bot: Chatbot, config: ServeConfig) -> ChatServer:
    server = ChatServer(("127.0.0.1", 0), bot, config)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def stop_server(server: ChatServer) -> None:
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def server(bot):
    s = start_server(bot, ServeConfig(max_body_bytes=16_384, max_tokens_default=8, max_tokens_limit=2000,
                                      client_timeout_s=10))
    yield s
    stop_server(s)


def ask(question: str = QUESTION, **kw) -> dict:
    return {"messages": [{"role": "user", "content": question}], **kw}


def health(server) -> dict:
    return json.loads(request(server.url, "GET", "/healthz")[2])


def wait_idle(server, timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    while (h := health(server))["active"] or h["waiting"]:
        assert time.monotonic() < deadline, f"engine still busy: {h}"
        time.sleep(0.05)
    return h


# --------------------------------------------------------------------------------------------- basics

def test_models_page_and_routes(server):
    status, _, body = request(server.url, "GET", "/v1/models")
    assert status == 200
    models = json.loads(body)["data"]
    assert [m["id"] for m in models] == ["base", "finetuned"] and all(m["rag"] for m in models)
    status, headers, page = request(server.url, "GET", "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    html = page.decode()
    assert "/v1/chat/completions" in html and "getReader" in html
    assert "src=\"http" not in html and "href=\"http" not in html  # nothing from a CDN: works offline
    status, _, body = request(server.url, "GET", "/nope")
    assert status == 404 and "no such endpoint" in json.loads(body)["error"]["message"]
    status, headers, body = request(server.url, "GET", "/v1/chat/completions")
    assert status == 405 and headers["Allow"] == "POST"


def test_completion_matches_evaluate_stage_greedy_answers(server, bot):
    """Same template, system prompt and greedy decoding as the evaluate stage; base != fine-tuned."""
    answers = {}
    for model in ("base", "finetuned"):
        status, body = post_chat(server.url, ask(model=model, max_tokens=12))
        assert status == 200, body
        assert body["object"] == "chat.completion" and body["model"] == model
        choice = body["choices"][0]
        assert choice["message"]["role"] == "assistant" and choice["finish_reason"] in ("stop", "length")
        u = body["usage"]
        assert 1 <= u["completion_tokens"] <= 12 and u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
        answers[model] = choice["message"]["content"]
    prompt = [to_messages(QUESTION, system=DEFAULT_SYSTEM_PROMPT)]
    gen = {"max_new_tokens": 12, "do_sample": False, "num_beams": 1}
    with bot.model.disable_adapter():
        want_base = generate(bot.model, bot.tokenizer, prompt, gen, 1)[0]["answer"]
    want_ft = generate(bot.model, bot.tokenizer, prompt, gen, 1)[0]["answer"]
    assert answers["base"].strip() == want_base and answers["finetuned"].strip() == want_ft
    assert want_base != want_ft
    # the model's default when none is named is the fine-tuned one; seeded sampling repeats
    assert post_chat(server.url, ask(max_tokens=12))[1]["choices"][0]["message"]["content"] == answers["finetuned"]
    sampled = [post_chat(server.url, ask(max_tokens=10, temperature=1.0, seed=7))[1] for _ in range(2)]
    assert sampled[0]["choices"][0]["message"]["content"] == sampled[1]["choices"][0]["message"]["content"]


def test_streaming_sse(server):
    plain = post_chat(server.url, ask(model="finetuned", max_tokens=10))[1]
    status, headers, raw = request(server.url, "POST", "/v1/chat/completions",
                                   ask(model="finetuned", max_tokens=10, stream=True,
                                       stream_options={"include_usage": True}))
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    events = sse_events(raw)
    assert events[-1] == "[DONE]" and "[DONE]" not in events[:-1]
    chunks = events[:-1]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"} and len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    pieces = [c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]]
    assert len([p for p in pieces if p]) >= 2  # streamed in pieces, not one blob
    assert "".join(pieces) == plain["choices"][0]["message"]["content"]
    finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert finish == [plain["choices"][0]["finish_reason"]]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == plain["usage"]


def test_rag_sources(server):
    status, body = post_chat(server.url, ask("How many days do I have to submit an expense claim?",
                                             rag=True, max_tokens=6))
    assert status == 200, body
    sources = body["sources"]
    assert len(sources) == 2 and sources[0]["url"] == "https://example.org/policies/expenses"
    assert sources[0]["title"] == "Expenses policy" and sources[0]["text"].startswith("Expense claims")
    # the excerpts made the prompt longer than the bare question's
    bare = post_chat(server.url, ask("How many days do I have to submit an expense claim?", max_tokens=6))[1]
    assert "sources" not in bare and body["usage"]["prompt_tokens"] > bare["usage"]["prompt_tokens"] + 20
    raw = request(server.url, "POST", "/v1/chat/completions", ask(QUESTION, rag=True, max_tokens=4, stream=True))[2]
    first = sse_events(raw)[0]
    assert first["sources"][0]["url"] == "https://example.org/policies/leave"


# --------------------------------------------------------------------------------------------- validation

@pytest.mark.parametrize("body, status, words", [
    (b"{not json", 400, "not valid JSON"),
    (b"[1, 2]", 400, "JSON object"),
    ({**ask(), "frobnicate": 1}, 400, "unknown field(s): frobnicate"),
    ({"messages": []}, 400, "non-empty list"),
    ({"model": "base"}, 400, "non-empty list"),
    ({"messages": [{"role": "tool", "content": "x"}]}, 400, "role must be one of"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "system", "content": "s"}]}, 400, "system message"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}, 400, "last message"),
    ({"messages": [{"role": "user", "content": 3}]}, 400, "content must be a string"),
    (ask(max_tokens=0), 400, "max_tokens must be an integer from 1 to 2000"),
    (ask(max_tokens=2001), 400, "max_tokens must be an integer from 1 to 2000"),
    (ask(max_tokens="ten"), 400, "max_tokens must be an integer"),
    (ask(temperature=5), 400, "temperature must be a number from 0 to 2"),
    (ask(n=2), 400, "n must be 1"),
    (ask(stream="yes"), 400, "stream must be true or false"),
    (ask(stream_options={"include_usage": True}), 400, "only allowed with stream"),
    (ask(model="gpt-4"), 404, "not served here"),
])
def test_malformed_requests_get_4xx_with_message(server, body, status, words):
    got, err = post_chat(server.url, body)
    assert got == status and words in err["error"]["message"], err
    assert err["error"]["type"] == "invalid_request_error"


def test_ignored_openai_fields_are_accepted(server):
    status, body = post_chat(server.url, ask(max_tokens=3, user="u1", top_p=1.0, presence_penalty=0, n=1,
                                             max_completion_tokens=None))
    assert status == 200, body


def test_body_limits(server):
    status, err = post_chat(server.url, ask("x" * 20_000))
    assert status == 413 and "limit is 16384" in err["error"]["message"]
    with socket.create_connection(server.server_address, timeout=10) as s:  # no Content-Length
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        head = s.recv(65536).decode()
    assert head.startswith("HTTP/1.0 411") and "Content-Length" in head


def test_history_is_trimmed_to_the_context_never_the_system_prompt(server, bot):
    small = dataclasses.replace(bot, context_tokens=160)
    turns = []
    for i in range(6):
        turns += [{"role": "user", "content": f"Question number {i} about the travel policy?"},
                  {"role": "assistant", "content": f"Answer number {i} about the travel policy."}]
    prompt = small.build_prompt(turns + [{"role": "user", "content": QUESTION}], max_new_tokens=40)
    assert len(prompt.ids) + 40 <= 160 and prompt.dropped >= 2 and prompt.dropped % 2 == 0
    assert prompt.messages[0] == {"role": "system", "content": DEFAULT_SYSTEM_PROMPT}
    assert prompt.messages[1]["role"] == "user" and prompt.messages[-1]["content"] == QUESTION
    assert prompt.messages[1:] == (turns + [{"role": "user", "content": QUESTION}])[prompt.dropped:]
    with pytest.raises(ChatbotError, match="exceeds the 160-token context"):
        small.build_prompt([{"role": "user", "content": "word " * 200}], max_new_tokens=40)
    status, err = post_chat(server.url, ask("word " * 1500, max_tokens=2000))  # the real 2048 context
    assert status == 400 and "context" in err["error"]["message"]


# --------------------------------------------------------------------------------------------- concurrency

def test_four_concurrent_streaming_clients(server):
    questions = [QUESTION, "Is remote work allowed?", "What is a high-risk AI system?", "Budget?"]

    def one(i: int):
        status, _, raw = request(server.url, "POST", "/v1/chat/completions",
                                 ask(questions[i], model=("base", "finetuned")[i % 2], max_tokens=200, stream=True),
                                 timeout=30)
        return status, sse_events(raw)

    before = health(server)["stats"]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(one, range(4), timeout=60))
    for status, events in results:
        assert status == 200 and events[-1] == "[DONE]"
        assert "".join(c["choices"][0]["delta"].get("content", "") for c in events[:-1] if c["choices"])
    after = wait_idle(server)["stats"]
    assert after["length"] + after["stop"] - before["length"] - before["stop"] == 4
    assert after["peak_batch"] >= 2  # the answers were decoded in one batch, not one after another


def _open_stream(server, max_tokens: int) -> socket.socket:
    body = json.dumps(ask(max_tokens=max_tokens, stream=True)).encode()
    s = socket.create_connection(server.server_address, timeout=10)
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
              + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    return s


def test_stalled_reader_does_not_block_other_requests(server):
    stalled = _open_stream(server, max_tokens=1900)  # reads nothing
    try:
        t0 = time.monotonic()
        status, body = post_chat(server.url, ask(max_tokens=8), timeout=15)
        assert status == 200 and body["usage"]["completion_tokens"] >= 1
        assert time.monotonic() - t0 < 10
    finally:
        stalled.close()
    wait_idle(server, timeout=60)


def test_client_disconnect_mid_stream_cancels_its_answer(server):
    before = health(server)["stats"]["cancelled"]
    s = _open_stream(server, max_tokens=1900)
    got = b""
    while got.count(b"data: ") < 3:  # headers and a few chunks, then hang up
        got += s.recv(4096)
    s.close()
    h = wait_idle(server)
    assert h["stats"]["cancelled"] == before + 1
    assert post_chat(server.url, ask(max_tokens=4))[0] == 200  # the server lives on


def test_full_queue_answers_503(bot):
    """max_waiting=1 and an engine not started yet: the second request finds the queue full."""
    engine = Engine(bot.model, bot.tokenizer, bot.engine.stop_ids, max_batch=1, max_waiting=1)
    server = start_server(bot.with_engine(engine), ServeConfig())
    try:
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(post_chat, server.url, ask(max_tokens=4))
            deadline = time.monotonic() + 10
            while engine.waiting < 1:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            status, headers, body = request(server.url, "POST", "/v1/chat/completions", ask(max_tokens=4))
            assert status == 503 and headers["Retry-After"] == "1"
            assert "already waiting" in json.loads(body)["error"]["message"]
            engine.start()
            assert first.result(timeout=30)[0] == 200
    finally:
        stop_server(server)
        engine.close()


# --------------------------------------------------------------------------------------------- the page

@pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is missing (Debian package chromium)")
def test_page_in_headless_chromium_streams_both_answers_with_sources(server):
    import pymupdf

    browser = Chromium(str(CHROMIUM))
    try:
        tab = browser.open(f"{server.url}/?q=Who+approves+annual+leave%3F&rag=1&max_tokens=16")
        browser.wait_for(tab, "document.body && document.body.dataset.state === 'done'", timeout=60)
        text = {m: browser.evaluate(tab, f"document.getElementById('answer-{m}').textContent")
                for m in ("base", "finetuned")}
        meta = {m: browser.evaluate(tab, f"document.getElementById('meta-{m}').textContent")
                for m in ("base", "finetuned")}
        links = browser.evaluate(tab, "[...document.querySelectorAll('#sources-finetuned a')]"
                                      ".map(a => [a.textContent, a.href])")
        dom = browser.evaluate(tab, "document.documentElement.outerHTML")
        png = browser.screenshot(tab)
    finally:
        browser.close()
    assert text["base"].strip() and text["finetuned"].strip() and text["base"] != text["finetuned"]
    assert all("first token" in m and "16 tokens" in m for m in meta.values()), meta
    assert links[0] == ["Leave policy", "https://example.org/policies/leave"] and len(links) == 2
    assert dom.count('href="https://example.org/policies/') == 4  # both columns list their 2 sources
    pix = pymupdf.Pixmap(png)
    assert pix.width >= 800 and pix.height >= 600
    samples = pix.samples
    step = pix.n * 97  # every 97th pixel's first channel
    values = samples[::step]
    mean = sum(values) / len(values)
    variance = sum((v - mean) ** 2 for v in values) / len(values)
    assert variance > 100 and len(set(values)) > 20, "screenshot looks blank"
