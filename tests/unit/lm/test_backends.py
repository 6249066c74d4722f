"""Chat backends: local (tiny random Llama, batched == one at a time), openai (a real HTTP server
on loopback), bedrock (boto3 against a loopback server speaking the Converse wire format)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from policytune.core.http import free_port
from policytune.lm.backends import (BackendError, BedrockBackend, BedrockConfig, LocalBackend, OpenAIBackend,
                                    OpenAIConfig, dir_fingerprint, make_backend)

# --------------------------------------------------------------------------------------------
# tiny_model_dir: the session fixture of conftest.py (the tiny random Llama).

PROMPTS = [
    [{"role": "system", "content": "You answer questions about policies."},
     {"role": "user", "content": "What does the leave policy say about parental leave for new parents?"}],
    [{"role": "user", "content": "Budget?"}],
    [{"role": "user", "content": "Summarise article 5 of the AI Act on prohibited practices " * 3}],
    [{"role": "user", "content": "Who approves travel expenses"}],
    [{"role": "user", "content": "privacy records retention period " * 2}],
]


@pytest.fixture(scope="module")
def tiny_backend(tiny_model_dir):
    b = LocalBackend(tiny_model_dir, dtype="float32", batch_size=8, device="cpu")
    b.load()
    return b


def test_local_batched_equals_one_at_a_time(tiny_model_dir, tiny_backend):
    """Greedy: continuous batching over the whole call (policytune.lm.generation.decode_greedy)
    gives each prompt exactly what it gets alone, and what model.generate gives it."""
    one = LocalBackend(tiny_model_dir, dtype="float32", batch_size=1, device="cpu",
                       model=tiny_backend.model, tokenizer=tiny_backend.tokenizer)
    got = {}
    batched = tiny_backend.chat(PROMPTS, max_new_tokens=10, on_result=lambda i, c: got.setdefault(i, c))
    singles = [one.chat([p], max_new_tokens=10)[0] for p in PROMPTS]
    assert [c.text for c in batched] == [c.text for c in singles]
    assert [c.n_tokens for c in batched] == [c.n_tokens for c in singles]
    assert sorted(got) == list(range(len(PROMPTS))) and [got[i] for i in range(len(PROMPTS))] == batched
    # The comparison means something: the random model does not say the same thing to everyone.
    assert len({c.text for c in singles}) > 1
    tok, model = tiny_backend.tokenizer, tiny_backend.model
    ids = tok(tiny_backend.render(PROMPTS[0]), add_special_tokens=False, return_tensors="pt")["input_ids"]
    ref = model.generate(input_ids=ids, max_new_tokens=10, do_sample=False, eos_token_id=sorted(tiny_backend._eos_ids))
    assert tok.decode(ref[0, ids.shape[1]:], skip_special_tokens=True).strip() == singles[0].text.strip()
    for c in batched:
        assert 1 <= c.n_tokens <= 10 and c.finish_reason in ("stop", "length")


def test_local_sampling_uses_left_padded_batches(tiny_backend):
    seen = []
    real_generate = tiny_backend.model.generate

    def spy(**kw):
        seen.append((kw["input_ids"].clone(), kw["attention_mask"].clone()))
        return real_generate(**kw)

    tiny_backend.model.generate = spy
    try:
        tiny_backend.chat(PROMPTS, max_new_tokens=4, temperature=1.0, seed=3)
    finally:
        del tiny_backend.model.generate
    assert len(seen) == 1
    ids, mask = seen[0]
    assert ids.shape[0] == len(PROMPTS)
    assert bool((mask[:, -1] == 1).all())
    assert int(mask[0].sum()) < mask.shape[1]  # the shortest prompt is padded ...
    assert int(mask[0, 0]) == 0                # ... on the left
    assert mask.sum(1).tolist() == sorted(mask.sum(1).tolist())
    assert tiny_backend.tokenizer.padding_side == "left"


def test_local_prefill_seeded_sampling_and_stats(tiny_backend):
    prefill = '[\n  {\n    "question": "'
    outs = tiny_backend.chat(PROMPTS[:2], max_new_tokens=6, prefill=prefill)
    assert all(o.text.startswith(prefill) for o in outs)
    assert tiny_backend.render(PROMPTS[1], prefill).endswith("<|im_start|>assistant\n" + prefill)
    a = tiny_backend.chat(PROMPTS[:3], max_new_tokens=8, temperature=1.0, seed=7)
    b = tiny_backend.chat(PROMPTS[:3], max_new_tokens=8, temperature=1.0, seed=7)
    c = tiny_backend.chat(PROMPTS[:3], max_new_tokens=8, temperature=1.0, seed=8)
    assert [x.text for x in a] == [x.text for x in b]
    assert [x.text for x in a] != [x.text for x in c]
    s = tiny_backend.stats
    assert s["prompts"] >= 11 and s["generated_tokens"] > 0 and s["seconds"] > 0


def test_make_backend_is_lazy_and_fingerprint_tracks_content(tiny_model_dir, tmp_path):
    class Cfg:
        backend, model_dir, dtype, batch_size = "local", str(tiny_model_dir), "float32", 4
    b = make_backend(Cfg())
    assert isinstance(b, LocalBackend) and not b.loaded
    assert b.fingerprint() == dir_fingerprint(tiny_model_dir)
    assert not b.loaded  # hashing the folder never loads the model
    copy = tmp_path / "m"
    shutil.copytree(tiny_model_dir, copy)
    assert dir_fingerprint(copy) == dir_fingerprint(tiny_model_dir)
    (copy / "generation_config.json").write_text('{"eos_token_id": 2}')
    assert dir_fingerprint(copy) != dir_fingerprint(tiny_model_dir)
    with pytest.raises(BackendError, match="not found"):
        make_backend(type("C", (), {"backend": "local", "model_dir": str(tmp_path / "nope")})()).fingerprint()
    with pytest.raises(BackendError, match="unknown backend"):
        make_backend(type("C", (), {"backend": "llamafile"})())


# --------------------------------------------------------------------------------------------
# A loopback HTTP server the tests start and stop.


class _Server:
    def __init__(self, handler_cls):
        self.requests: list[dict] = []
        self.counts: dict[str, int] = {}
        outer = self

        class H(handler_cls):
            server_ref = outer

            def log_message(self, *a):  # keep pytest output clean
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


class _ChatCompletions(BaseHTTPRequestHandler):
    """/<route>/v1/chat/completions: ok | flaky (429 then 200) | down (500) | auth (401)."""

    def _send(self, status: int, body: dict, headers: dict | None = None):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        srv = self.server_ref
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        route = self.path.strip("/").split("/")[0]
        srv.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
        n = srv.counts[route] = srv.counts.get(route, 0) + 1
        if not self.path.endswith("/v1/chat/completions"):
            return self._send(404, {"error": {"message": "not found"}})
        if route == "down":
            return self._send(500, {"error": {"message": "boom"}})
        if route == "auth":
            return self._send(401, {"error": {"message": "invalid api key"}})
        if route == "flaky" and n == 1:
            return self._send(429, {"error": {"message": "slow down"}}, {"Retry-After": "0"})
        user = next(m["content"] for m in body["messages"] if m["role"] == "user")
        last = body["messages"][-1]
        text = f"echo:{user}"
        if last["role"] == "assistant":  # a continued prefill: return only the continuation
            text = "continued"
        return self._send(200, {"id": "x", "object": "chat.completion", "model": body["model"],
                                "choices": [{"index": 0, "finish_reason": "length" if body["max_tokens"] < 5 else "stop",
                                             "message": {"role": "assistant", "content": text}}],
                                "usage": {"prompt_tokens": 3, "completion_tokens": 7, "total_tokens": 10}})


@pytest.fixture
def chat_server():
    s = _Server(_ChatCompletions)
    yield s
    s.stop()


def _openai(server_url: str, route: str, **kw) -> OpenAIBackend:
    cfg = OpenAIConfig(base_url=f"{server_url}/{route}/v1", model="tiny-teacher", api_key_env="PT_TEST_KEY",
                       timeout_s=5.0, max_retries=2, backoff_s=0.01, max_backoff_s=0.05, concurrency=3)
    for k, v in kw.items():
        setattr(cfg, k, v)
    return OpenAIBackend(cfg)


def test_openai_request_shape_order_and_key_from_env(chat_server, monkeypatch, caplog):
    monkeypatch.setenv("PT_TEST_KEY", "sk-secret-123")
    b = _openai(chat_server.url, "ok")
    batch = [[{"role": "system", "content": "sys"}, {"role": "user", "content": f"q{i}"}] for i in range(5)]
    with caplog.at_level(logging.DEBUG):
        outs = b.chat(batch, max_new_tokens=32, temperature=0.0, seed=11)
    assert [o.text for o in outs] == [f"echo:q{i}" for i in range(5)]  # order kept under concurrency
    assert all(o.n_tokens == 7 and o.finish_reason == "stop" for o in outs)
    req = chat_server.requests[0]
    assert req["path"] == "/ok/v1/chat/completions"
    assert req["auth"] == "Bearer sk-secret-123"
    body = req["body"]
    assert body["model"] == "tiny-teacher" and body["max_tokens"] == 32 and body["temperature"] == 0.0
    assert body["seed"] == 11 and body["messages"][0] == {"role": "system", "content": "sys"}
    assert "sk-secret-123" not in caplog.text
    assert b.stats["prompts"] == 5 and b.stats["generated_tokens"] == 35
    assert b.fingerprint() == "openai:tiny-teacher" and b.model_id == "tiny-teacher"


def test_openai_no_key_sends_no_header_and_prefill_continues(chat_server, monkeypatch):
    monkeypatch.delenv("PT_TEST_KEY", raising=False)
    b = _openai(chat_server.url, "ok", prefill=True)
    out = b.chat([[{"role": "user", "content": "q"}]], max_new_tokens=3, prefill='[{"question": "')[0]
    assert out.text == '[{"question": "continued' and out.finish_reason == "length"
    req = chat_server.requests[-1]
    assert req["auth"] is None
    assert req["body"]["messages"][-1] == {"role": "assistant", "content": '[{"question": "'}
    assert req["body"]["continue_final_message"] is True
    # prefill off (the default): the prefill is not sent and not added
    out = _openai(chat_server.url, "ok").chat([[{"role": "user", "content": "q"}]], max_new_tokens=8,
                                               prefill='[{"question": "')[0]
    assert out.text == "echo:q" and chat_server.requests[-1]["body"]["messages"][-1]["role"] == "user"


def test_openai_429_then_200_is_retried(chat_server, caplog):
    b = _openai(chat_server.url, "flaky")
    with caplog.at_level(logging.WARNING, logger="policytune.lm.backends"):
        out = b.chat([[{"role": "user", "content": "q"}]], max_new_tokens=8)[0]
    assert out.text == "echo:q"
    assert chat_server.counts["flaky"] == 2 and b.stats["retries"] == 1
    assert "HTTP 429" in caplog.text


def test_openai_500_gives_up_after_bounded_retries(chat_server):
    b = _openai(chat_server.url, "down")
    with pytest.raises(BackendError, match=r"kept failing after 3 attempts: HTTP 500"):
        b.chat([[{"role": "user", "content": "q"}]], max_new_tokens=8)
    assert chat_server.counts["down"] == 3


def test_openai_auth_error_names_the_env_var_not_the_key(chat_server, monkeypatch):
    monkeypatch.setenv("PT_TEST_KEY", "sk-wrong-456")
    with pytest.raises(BackendError) as e:
        _openai(chat_server.url, "auth").chat([[{"role": "user", "content": "q"}]], max_new_tokens=8)
    assert "PT_TEST_KEY" in str(e.value) and "sk-wrong-456" not in str(e.value)
    assert chat_server.counts["auth"] == 1  # not retried


def test_openai_unreachable_is_a_clear_error():
    b = OpenAIBackend(OpenAIConfig(base_url=f"http://127.0.0.1:{free_port()}/v1", model="m", timeout_s=2,
                                   max_retries=1, backoff_s=0.01))
    t0 = time.monotonic()
    with pytest.raises(BackendError, match=r"cannot reach .* after 2 attempts.*server running"):
        b.chat([[{"role": "user", "content": "q"}]], max_new_tokens=8)
    assert time.monotonic() - t0 < 10
    with pytest.raises(BackendError, match="openai.model"):
        OpenAIBackend(OpenAIConfig(model=""))


# --------------------------------------------------------------------------------------------
# Bedrock Converse at its boundary: real boto3, real HTTP, a server on 127.0.0.1.


class _Converse(BaseHTTPRequestHandler):
    """POST /model/<modelId>/converse. Model ids: ok | throttle-once | always-throttle | denied."""

    def _send(self, status: int, body: dict, error_type: str | None = None):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if error_type:
            self.send_header("x-amzn-ErrorType", f"{error_type}:http://internal.amazon.com/coral/")
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        srv = self.server_ref
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        parts = self.path.split("/")  # ['', 'model', '<id>', 'converse']
        model = urllib.parse.unquote(parts[2]) if len(parts) == 4 else ""
        srv.requests.append({"path": self.path, "model": model, "body": body,
                             "auth": self.headers.get("Authorization", "")})
        n = srv.counts[model] = srv.counts.get(model, 0) + 1
        if parts[1:2] != ["model"] or parts[-1] != "converse":
            return self._send(404, {"message": "unknown operation"}, "UnknownOperationException")
        if model == "denied":
            return self._send(403, {"message": "You don't have access to the model with the specified model ID."},
                              "AccessDeniedException")
        if model == "always-throttle" or (model == "throttle-once" and n == 1):
            return self._send(429, {"message": "Too many requests, please wait before trying again."},
                              "ThrottlingException")
        text = "continued" if body["messages"][-1]["role"] == "assistant" else "hello from bedrock"
        return self._send(200, {"output": {"message": {"role": "assistant", "content": [{"text": text}]}},
                                "stopReason": "max_tokens" if body["inferenceConfig"]["maxTokens"] < 5 else "end_turn",
                                "usage": {"inputTokens": 12, "outputTokens": 5, "totalTokens": 17},
                                "metrics": {"latencyMs": 3}})


@pytest.fixture
def bedrock_env(monkeypatch, tmp_path):
    for k in list(os.environ):
        if k.startswith("AWS_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    s = _Server(_Converse)
    yield s
    s.stop()


def _bedrock(url: str, model_id: str, **kw) -> BedrockBackend:
    return BedrockBackend(BedrockConfig(model_id=model_id, region="us-east-1", endpoint_url=url, timeout_s=5,
                                        max_retries=kw.pop("max_retries", 2), backoff_s=0.01, max_backoff_s=0.05,
                                        **kw))


def test_bedrock_converse_request_shape(bedrock_env):
    b = _bedrock(bedrock_env.url, "anthropic.claude-3-haiku-20240307-v1:0")
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "q1"}]
    out = b.chat([msgs], max_new_tokens=64, temperature=0.0, prefill='[\n  {\n    "question": "')[0]
    req = bedrock_env.requests[0]
    assert req["model"] == "anthropic.claude-3-haiku-20240307-v1:0"
    assert req["path"].startswith("/model/anthropic.claude-3-haiku-20240307-v1") and req["path"].endswith("/converse")
    assert req["auth"].startswith("AWS4-HMAC-SHA256 Credential=testing/") and "/us-east-1/bedrock/" in req["auth"]
    body = req["body"]
    assert body["system"] == [{"text": "be brief"}]
    assert body["messages"][0] == {"role": "user", "content": [{"text": "q1"}]}
    assert body["messages"][-1] == {"role": "assistant", "content": [{"text": '[\n  {\n    "question": "'}]}
    assert body["inferenceConfig"] == {"maxTokens": 64, "temperature": 0.0}
    assert out.text == '[\n  {\n    "question": "continued'
    assert out.n_tokens == 5 and out.finish_reason == "stop"
    out = _bedrock(bedrock_env.url, "m", prefill=False).chat([msgs], max_new_tokens=3)[0]
    assert out.text == "hello from bedrock" and out.finish_reason == "length"


def test_bedrock_throttling_is_retried(bedrock_env, caplog):
    b = _bedrock(bedrock_env.url, "throttle-once")
    with caplog.at_level(logging.WARNING, logger="policytune.lm.backends"):
        out = b.chat([[{"role": "user", "content": "q"}]], max_new_tokens=16)[0]
    assert out.text == "hello from bedrock"
    assert bedrock_env.counts["throttle-once"] == 2 and b.stats["retries"] == 1
    assert "ThrottlingException" in caplog.text
    with pytest.raises(BackendError, match="still throttled"):
        _bedrock(bedrock_env.url, "always-throttle", max_retries=1).chat([[{"role": "user", "content": "q"}]],
                                                                         max_new_tokens=16)
    assert bedrock_env.counts["always-throttle"] == 2


def test_bedrock_access_denied_is_clear_and_not_retried(bedrock_env):
    with pytest.raises(BackendError, match=r"access denied to model denied in us-east-1.*bedrock:InvokeModel"):
        _bedrock(bedrock_env.url, "denied").chat([[{"role": "user", "content": "q"}]], max_new_tokens=16)
    assert bedrock_env.counts["denied"] == 1


def test_bedrock_no_credentials_and_unreachable(bedrock_env, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(BackendError, match="no usable AWS credentials"):
        _bedrock(bedrock_env.url, "ok").chat([[{"role": "user", "content": "q"}]], max_new_tokens=16)
    assert not bedrock_env.requests  # nothing was sent unsigned
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with pytest.raises(BackendError, match=r"cannot reach http://127.0.0.1:\d+ after 2 attempts"):
        _bedrock(f"http://127.0.0.1:{free_port()}", "ok", max_retries=1).chat(
            [[{"role": "user", "content": "q"}]], max_new_tokens=16)


def test_int8_quantize_is_opt_in_and_changes_the_cache_identity(tiny_model_dir):
    """quantize: int8 swaps every nn.Linear for a dynamic int8 one at load (CPU only), keeps the
    chat contract, and is part of the fingerprint (cached float replies are not reused)."""
    import torch

    from policytune.lm.loading import resolve_quantize

    assert resolve_quantize("auto", "cpu", torch.float32) == "int8"
    assert resolve_quantize("auto", "cpu", torch.bfloat16) == "none"
    assert resolve_quantize("auto", "cuda", torch.float32) == "none"
    with pytest.raises(ValueError, match="GPU"):
        resolve_quantize("int8", "cuda", torch.float32)
    with pytest.raises(BackendError, match="unknown quantize"):
        LocalBackend(tiny_model_dir, quantize="int4")
    q = LocalBackend(tiny_model_dir, dtype="float32", batch_size=4, device="cpu", quantize="int8")
    f = LocalBackend(tiny_model_dir, dtype="float32", batch_size=4, device="cpu")
    assert q.fingerprint() != f.fingerprint() and q.fingerprint().startswith(f.fingerprint())
    outs = q.chat(PROMPTS[:3], max_new_tokens=6)
    assert q.quantized == "int8"
    assert not any(type(m) is torch.nn.Linear for m in q.model.modules())
    assert all(1 <= o.n_tokens <= 6 and o.finish_reason in ("stop", "length") for o in outs)
    assert [o.text for o in q.chat(PROMPTS[:3], max_new_tokens=6)] == [o.text for o in outs]  # deterministic


# --------------------------------------------------------------------------------------------
# Hostile endpoints (tests/helpers/hostile_server.py): every misbehaviour is bounded in time
# and size, retried with counted attempts, and ends in a reply, a counted rejection
# (finish_reason "error") or a clear BackendError — never another exception.

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from policytune.lm.backends import BadReply, parse_chat_completion, parse_converse  # noqa: E402
from tests.helpers.hostile_server import HostileServer  # noqa: E402

Q = [[{"role": "user", "content": "q"}]]


@pytest.fixture(scope="module")
def hostile():
    with HostileServer(huge_bytes=2 << 20, max_slow_s=15) as s:
        yield s


def _hostile_openai(srv: HostileServer, mode: str, **kw) -> OpenAIBackend:
    base = dict(base_url=srv.openai_url(mode), model="m", api_key_env="", timeout_s=5.0, max_retries=1,
                backoff_s=0.01, max_backoff_s=5.0, concurrency=1, max_reply_bytes=1 << 20)
    return OpenAIBackend(OpenAIConfig(**{**base, **kw}))


def _hostile_bedrock(srv: HostileServer, mode: str, **kw) -> BedrockBackend:
    base = dict(model_id=mode, region="us-east-1", endpoint_url=srv.url, timeout_s=5.0, max_retries=1,
                backoff_s=0.01, max_backoff_s=5.0, concurrency=1, max_reply_bytes=1 << 20)
    return BedrockBackend(BedrockConfig(**{**base, **kw}))


@pytest.mark.parametrize("mode, reason", [
    ("content-number", "bad_content"), ("content-dict", "bad_content"), ("no-choices", "not_a_completion"),
    ("cut-nolength", "not_json"), ("huge", "too_large"), ("huge-nolength", "too_large"),
    ("huge-error", "too_large")])
def test_openai_hostile_reply_is_retried_then_counted_as_rejected(hostile, mode, reason):
    b = _hostile_openai(hostile, mode)
    n0 = hostile.counts.get(mode, 0)
    out = b.chat(Q, max_new_tokens=8)[0]
    assert out.finish_reason == "error" and out.text == "" and out.n_tokens == 0
    assert out.error.startswith(reason)
    assert hostile.counts[mode] - n0 == 2 == b.stats["attempts"]  # retried once
    assert b.stats["retries_by_reason"] == {reason: 1} and b.stats["rejected_by_reason"] == {reason: 1}
    assert b.stats["prompts"] == 1


def test_openai_content_as_text_parts_null_and_bad_usage(hostile):
    b = _hostile_openai(hostile, "content-list")
    assert b.chat(Q, max_new_tokens=8)[0].text == "ab"
    out = _hostile_openai(hostile, "content-null").chat(Q, max_new_tokens=8)[0]
    assert (out.text, out.finish_reason) == ("", "stop")
    b = _hostile_openai(hostile, "usage-bad")
    out = b.chat(Q, max_new_tokens=8)[0]
    assert out.text == "echo:q" and out.n_tokens == 1  # estimated from the text
    assert b.stats["bad_usage"] == 1 and b.stats["attempts"] == 1 and b.stats["retries"] == 0


def test_openai_body_cut_short_is_retried_then_a_clear_error(hostile):
    b = _hostile_openai(hostile, "cut", max_retries=2)
    with pytest.raises(BackendError, match=r"connection broke during the reply in each of 3 attempts"):
        b.chat(Q, max_new_tokens=8)
    assert b.stats["attempts"] == 3 and b.stats["retries_by_reason"] == {"cut_short": 2}


def test_openai_trickled_reply_ends_at_the_total_deadline(hostile):
    """1 byte/s never trips a per-read timeout; the total deadline ends each attempt on time."""
    b = _hostile_openai(hostile, "trickle", timeout_s=1.5, max_retries=1)
    t0 = time.monotonic()
    with pytest.raises(BackendError, match=r"no complete reply within openai.timeout_s=1.5s.*each of 2 attempts"):
        b.chat(Q, max_new_tokens=8)
    assert time.monotonic() - t0 < 2 * 1.5 + 1.5
    assert b.stats["attempts"] == 2 and b.stats["retries_by_reason"] == {"timeout": 1}


@pytest.mark.parametrize("mode", ["429-seconds", "429-date"])
def test_openai_retry_after_in_both_forms_is_honoured(hostile, mode):
    """Retry-After: 1, or an HTTP-date 2 s ahead: the retry waits for it, not for backoff_s (0.01 s)."""
    b = _hostile_openai(hostile, mode)
    assert b.chat(Q, max_new_tokens=8)[0].text == "echo:q"
    t = hostile.times[mode]
    assert len(t) == 2 and t[1] - t[0] >= 0.9
    assert b.stats["retries_by_reason"] == {"http_429": 1} and b.stats["attempts"] == 2


def test_openai_503_then_ok(hostile):
    b = _hostile_openai(hostile, "503-then-ok")
    assert b.chat(Q, max_new_tokens=8)[0].text == "echo:q"
    assert b.stats["retries_by_reason"] == {"http_503": 1} and b.stats["rejected"] == 0


@pytest.fixture(scope="module")
def aws_env(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        for k in list(os.environ):
            if k.startswith("AWS_"):
                mp.delenv(k)
        none = str(tmp_path_factory.mktemp("aws") / "none")
        for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                     "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": none,
                     "AWS_SHARED_CREDENTIALS_FILE": none}.items():
            mp.setenv(k, v)
        yield


@pytest.mark.parametrize("mode, reason", [("content-number", "bad_content"), ("content-dict", "bad_content"),
                                          ("no-choices", "not_a_completion"), ("huge", "too_large"),
                                          ("cut-nolength", "not_json")])
def test_bedrock_hostile_reply_is_retried_then_counted_as_rejected(hostile, aws_env, mode, reason):
    b = _hostile_bedrock(hostile, mode)
    out = b.chat(Q, max_new_tokens=8)[0]
    assert out.finish_reason == "error" and out.text == "" and out.error.startswith(reason)
    assert b.stats["attempts"] == 2 and b.stats["rejected_by_reason"] == {reason: 1}


def test_bedrock_text_blocks_bad_usage_cut_short_and_trickle(hostile, aws_env):
    assert _hostile_bedrock(hostile, "content-list").chat(Q, max_new_tokens=8)[0].text == "ab"
    b = _hostile_bedrock(hostile, "usage-bad")
    out = b.chat(Q, max_new_tokens=8)[0]
    assert out.text == "echo:q" and out.finish_reason == "stop" and b.stats["bad_usage"] == 1
    b = _hostile_bedrock(hostile, "cut")
    with pytest.raises(BackendError, match=r"bedrock: the connection to .* broke during the reply"):
        b.chat(Q, max_new_tokens=8)
    assert b.stats["retries_by_reason"] == {"cut_short": 1}
    b = _hostile_bedrock(hostile, "trickle", timeout_s=1.5)
    t0 = time.monotonic()
    with pytest.raises(BackendError, match=r"no complete reply within bedrock.timeout_s=1.5s.*each of 2 attempts"):
        b.chat(Q, max_new_tokens=8)
    assert time.monotonic() - t0 < 2 * 1.5 + 1.5 and b.stats["retries_by_reason"] == {"timeout": 1}
    b = _hostile_bedrock(hostile, "429-date")
    assert b.chat(Q, max_new_tokens=8)[0].text == "echo:q"
    t = hostile.times["converse:429-date"]
    assert t[1] - t[0] >= 0.9 and b.stats["retries_by_reason"] == {"ThrottlingException": 1}


# -- property tests over reply shapes --------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=20)


def _maybe(valid):
    return st.one_of(valid, _json)


_part = _maybe(st.fixed_dictionaries({"type": _maybe(st.sampled_from(["text", "output_text", "refusal"])),
                                      "text": _maybe(st.text(max_size=20))}))
_content = st.one_of(st.text(max_size=40), st.none(), st.lists(_part, max_size=4), _json)
_usage = _maybe(st.fixed_dictionaries({"completion_tokens": _maybe(st.integers(-5, 10 ** 12))}))
_message = _maybe(st.fixed_dictionaries({"role": _maybe(st.just("assistant")), "content": _content}))
_choice = _maybe(st.fixed_dictionaries({"message": _message,
                                        "finish_reason": _maybe(st.sampled_from(["stop", "length"]))}))
_completion = _maybe(st.fixed_dictionaries({"choices": _maybe(st.lists(_choice, max_size=2)), "usage": _usage}))
_deep = st.builds(lambda d, c: c[0] * d + c[1] * d, st.integers(1, 200_000),
                  st.sampled_from([("[", "]"), ('{"a":', "}"), ('{"choices":[', "]}")]))
_raw = st.one_of(_completion.map(lambda v: json.dumps(v).encode()), _deep.map(str.encode),
                 _deep.map(lambda s: s[: len(s) // 2].encode()), st.binary(max_size=64),
                 st.text(max_size=64).map(lambda s: s.encode("utf-8", "surrogatepass")))

N_PURE = int(os.environ.get("PT_HYPOTHESIS_REPLIES", "600"))


@settings(max_examples=N_PURE, deadline=None, suppress_health_check=list(HealthCheck))
@given(_raw)
def test_parse_chat_completion_is_total(raw):
    """Any bytes, any JSON shape, any depth: a ParsedReply or a BadReply, nothing else."""
    try:
        p = parse_chat_completion(raw)
    except BadReply as e:
        assert e.reason in ("not_json", "not_a_completion", "bad_content")
        return
    assert isinstance(p.text, str) and p.finish_reason in ("stop", "length")
    p.text.encode("utf-8")  # writable
    assert p.n_tokens is None or (type(p.n_tokens) is int and p.n_tokens >= 0)


_block = _maybe(st.fixed_dictionaries({"text": _maybe(st.text(max_size=20))}))
_converse = _maybe(st.fixed_dictionaries({
    "output": _maybe(st.fixed_dictionaries({"message": _maybe(st.fixed_dictionaries({
        "role": st.just("assistant"), "content": _maybe(st.lists(_block, max_size=3))}))})),
    "stopReason": _maybe(st.sampled_from(["end_turn", "max_tokens"])),
    "usage": _maybe(st.fixed_dictionaries({"outputTokens": _maybe(st.integers(-5, 10 ** 12))}))}))


@settings(max_examples=N_PURE, deadline=None, suppress_health_check=list(HealthCheck))
@given(_converse)
def test_parse_converse_is_total(resp):
    try:
        p = parse_converse(resp)
    except BadReply:
        return
    assert isinstance(p.text, str) and p.finish_reason in ("stop", "length")


def _wire_ok(out) -> None:
    assert isinstance(out.text, str) and type(out.n_tokens) is int and out.n_tokens >= 0
    assert out.finish_reason in ("stop", "length", "error")


N_WIRE = int(os.environ.get("PT_HYPOTHESIS_WIRE", "150"))


@pytest.fixture(scope="module")
def wire_backends(hostile, aws_env):
    bs = {"openai": _hostile_openai(hostile, "raw", max_retries=0),
          "bedrock": _hostile_bedrock(hostile, "raw", max_retries=0)}
    yield bs
    for b in bs.values():
        b.close()


@settings(max_examples=N_WIRE, deadline=None, suppress_health_check=list(HealthCheck))
@given(raw=_raw)
def test_openai_backend_over_the_wire_never_raises_but_backend_error(hostile, wire_backends, raw):
    hostile.raw = raw
    try:
        _wire_ok(wire_backends["openai"].chat(Q, max_new_tokens=8)[0])
    except BackendError:
        pass


@settings(max_examples=N_WIRE, deadline=None, suppress_health_check=list(HealthCheck))
@given(raw=st.one_of(_converse.map(lambda v: json.dumps(v).encode()), _raw))
def test_bedrock_backend_over_the_wire_never_raises_but_backend_error(hostile, wire_backends, raw):
    hostile.raw = raw
    try:
        _wire_ok(wire_backends["bedrock"].chat(Q, max_new_tokens=8)[0])
    except BackendError:
        pass
