"""Shared set-up of the judge tests (tests/unit/evaluation/test_judge.py, tests/stages/test_judge.py):
a scripted chat backend, the answers fixture, the grading script it replies with, a loopback
OpenAI-compatible server speaking that script, and a guard that fails any non-loopback
connection (deepeval telemetry must stay off).
"""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from policytune.lm.backends import Backend, Completion

VALID_STEPS = '{"steps": ["Compare the actual output with the expected output.", "Check every fact."]}'


def block_network(monkeypatch):
    """Fail any connection that is not to loopback, and remember it (deepeval telemetry, hubs);
    a generator for an autouse fixture: yields the attempts, asserts there were none."""
    attempts = []
    real_connect = socket.socket.connect

    def connect(self, address):
        host = address[0] if isinstance(address, tuple) else str(address)
        if isinstance(address, tuple) and host not in ("127.0.0.1", "::1", "localhost"):
            attempts.append(address)
            raise OSError(f"test: network access to {address} blocked")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    yield attempts
    assert not attempts, f"tried to reach the network: {attempts}"


class ScriptedBackend(Backend):
    """A chat backend whose reply is ``script(messages)``; counts calls."""

    name = "scripted"

    def __init__(self, script):
        super().__init__()
        self.script = script
        self.requests: list[list[dict]] = []

    @property
    def model_id(self) -> str:
        return "scripted-judge"

    def fingerprint(self) -> str:
        return "scripted:1"

    def chat(self, batch, *, max_new_tokens, temperature=0.0, seed=0, prefill=None):
        outs = []
        for messages in batch:
            self.requests.append(list(messages))
            text = self.script(messages)
            outs.append(Completion(text=text, n_tokens=len(text.split()), finish_reason="stop"))
        self._count(outs, 0.0)
        return outs


def is_steps_prompt(messages) -> bool:
    return "evaluation steps" in messages[0]["content"] and "Test Case:" not in messages[0]["content"]


def is_retry(messages) -> bool:
    return len(messages) > 1 and messages[-1]["content"].startswith("Your reply could not be used")


def answers_fixture() -> list[dict]:
    """Three questions answered by base and finetuned; one answer the scripted judge never
    scores validly ("Bananas"), one empty answer."""
    qs = [("q1", "How much can a hotel in Lyon cost?", "145 EUR a night, local taxes included."),
          ("q2", "What meal allowance applies in Geneva?", "75 EUR per day."),
          ("q3", "When are expense claims due?", "Within 30 calendar days on form FIN-03.")]
    rows = []
    for qa_id, q, ref in qs:
        rows.append({"qa_id": qa_id, "model": "base", "question": q, "reference": ref,
                     "answer": "Bananas are yellow." if qa_id == "q2" else "I am not sure.", "gen": {}})
        rows.append({"qa_id": qa_id, "model": "finetuned", "question": q, "reference": ref,
                     "answer": "" if qa_id == "q3" else ref, "gen": {}})
    return rows


def grading_script(messages) -> str:
    """Steps: valid. Scores: 5 if the answer equals the reference text, 2 otherwise; the
    first attempt is always prose (so every valid score needs one retry); "Bananas" never parses."""
    prompt = messages[0]["content"]
    if is_steps_prompt(messages):
        return VALID_STEPS
    if "Bananas" in prompt:
        return "I think this answer is about fruit." if not is_retry(messages) else '{"score": 9, "reason": "x"}'
    if not is_retry(messages):
        return "The answer looks fine to me."
    exact = any(ref in prompt.split("Actual Output:")[1].split("Expected Output:")[0]
                for ref in ("145 EUR a night", "75 EUR per day", "Within 30 calendar days"))
    return json.dumps({"reason": "scripted", "score": 5 if exact else 2})


# --------------------------------------------------------------------------- loopback OpenAI server


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append(body)
        text = grading_script(body["messages"])
        out = {"id": "x", "object": "chat.completion", "model": body["model"],
               "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
               "usage": {"completion_tokens": 5}}
        data = json.dumps(out).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def serve_openai():
    """A loopback OpenAI-compatible server answering with :func:`grading_script`; a generator for
    a fixture: yields the server (its ``requests`` list holds every request body)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
