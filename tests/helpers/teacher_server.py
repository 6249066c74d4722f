"""A loopback OpenAI-compatible chat-completions server that plays an *extractive* teacher.

The end-to-end test cannot use a real teacher LLM in CI time (the tiny random Llama writes no
JSON, and the 1.5B takes minutes per batch), so this server answers the generate_qa prompt the
way a good teacher would, from the document text inside the prompt: one question per sentence
that states a specific fact (a number, a form code, a role), answered by that sentence. It
speaks the real wire protocol, so the openai backend, parsing, grounding, dedupe, cache and
everything downstream run for real. Started by the tests on 127.0.0.1, stopped at teardown.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DOC_RE = re.compile(r"<document[^>]*>\n?(.*?)</document>", re.S)
TITLE_RE = re.compile(r'<document title="([^"]*)"')
N_RE = re.compile(r"Write (\d+) question-answer pairs")
FACT_RE = re.compile(r"\d|[A-Z]{2,}-\d+|\b(?:must|within|approves?|requires?)\b")
STOP = {"the", "a", "an", "of", "to", "in", "and", "or", "for", "on", "at", "by", "is", "are", "be",
        "with", "that", "this", "it", "as", "from", "all", "any", "each", "must", "will", "may"}


def qa_pairs(prompt: str, n: int) -> list[dict]:
    docs = DOC_RE.findall(prompt)  # the last one: the system prompt mentions the tags too
    titles = TITLE_RE.findall(prompt)
    title = titles[-1] if titles else "the policy"
    text = docs[-1] if docs else ""
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", " ".join(text.split())) if s.strip()]
    facts = [s for s in sentences if FACT_RE.search(s) and 6 <= len(s.split()) <= 40]
    pairs = []
    for s in facts[:n]:
        words = [w.strip(",;:()") for w in s.rstrip(".").split()]
        topic = " ".join(w for w in words if w.lower() not in STOP)[:90].strip()
        pairs.append({"question": f"Under the {title.split(' — ')[0]}, what is stated about {topic}?",
                      "answer": s})
    return pairs


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        prompt = "\n".join(str(m.get("content", "")) for m in body.get("messages", []))
        n = int((N_RE.search(prompt) or [None, 3])[1])
        content = json.dumps(qa_pairs(prompt, n), indent=2)
        self.server.calls += 1
        reply = {"id": f"cmpl-{self.server.calls}", "object": "chat.completion", "model": body.get("model", "extractive"),
                 "choices": [{"index": 0, "finish_reason": "stop",
                              "message": {"role": "assistant", "content": content}}],
                 "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens": len(content.split()),
                           "total_tokens": len(prompt.split()) + len(content.split())}}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class TeacherServer:
    def __init__(self):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.calls = 0
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    @property
    def calls(self) -> int:
        return self.httpd.calls

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
