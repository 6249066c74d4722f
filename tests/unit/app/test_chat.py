"""`python -m policytune.app.chat` and the `policytune` console script, run as a user would.

Questions are piped into the real CLI (tiny model + tiny adapter); its streamed answer must be the
evaluate stage's greedy answer to the same prompt (params.yaml's system prompt, the tokenizer's
chat template). --rag must print the retrieved chunks' URLs; missing models and a chat-template
mismatch must be one clear line, not a traceback.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from policytune.app.chat import Chatbot, ChatbotError, defaults_from_params
from policytune.evaluation.answers import generate
from policytune.lm.adapters import TRAIN_INFO, load_lm, load_tok
from policytune.lm.chat_format import to_messages
from tests.helpers.chat import CHUNKS, chunks_file, encoder_dir, post_chat, request, tiny_adapter_dir, tiny_model_dir
from tests.helpers.repo import REPO

ENV = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
       "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def tiny(request, tmp_path_factory) -> Path:
    return tiny_model_dir(request.config, tmp_path_factory)


@pytest.fixture(scope="module")
def adapter(tiny, tmp_path_factory) -> Path:
    return tiny_adapter_dir(tiny, tmp_path_factory.mktemp("adapter"))


def chat(args: list[str], stdin: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """The chat CLI run in the repository (its params.yaml). Without --base/--rag/--variant the CLI
    would answer with the best variant of the repository's committed metrics/eval.json; these tests
    pin the variant they mean (fine-tuned, no retrieval) so they do not depend on that file."""
    if not {"--base", "--rag", "--variant"} & set(args):
        args = ["--variant", "finetuned", *args]
    return subprocess.run([sys.executable, "-m", "policytune.app.chat", *args], input=stdin, cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def answers(stdout: str) -> list[str]:
    """The text after each "bot> " (one answer a line with the tiny model's short answers)."""
    return [line.split("bot> ", 1)[1] for line in stdout.splitlines() if "bot> " in line]


def test_chat_streams_the_fine_tuned_answer_and_keeps_history(tiny, adapter):
    p = chat(["--model-dir", str(tiny), "--adapter-dir", str(adapter), "--max-new-tokens", "8"],
             "Who approves annual leave?\nAnd remote work?\n/exit\n")
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr
    got = answers(p.stdout)
    assert len(got) == 2 and all(a.strip() for a in got), p.stdout
    assert "(answer cut at --max-new-tokens 8)" in p.stdout
    # The same answer the evaluate stage gives: params.yaml's system prompt, the chat template, greedy.
    system_prompt, _, _ = defaults_from_params(str(REPO / "params.yaml"))
    tok = load_tok(tiny)
    from peft import PeftModel

    model = PeftModel.from_pretrained(load_lm(tiny), str(adapter)).eval()
    gen = {"max_new_tokens": 8, "do_sample": False, "num_beams": 1}
    first = generate(model, tok, [to_messages("Who approves annual leave?", system=system_prompt)], gen, 1)[0]
    assert got[0].strip() == first["answer"]
    # the second turn sees the first (history), so it is not the bare second question's answer
    history = to_messages("Who approves annual leave?", got[0].strip(), system=system_prompt)
    second = generate(model, tok, [history + [{"role": "user", "content": "And remote work?"}]], gen, 1)[0]
    assert got[1].strip() == second["answer"]


def test_chat_base_and_rag_print_source_urls(tiny, tmp_path):
    chunks = chunks_file(tmp_path / "chunks.jsonl")
    p = chat(["--model-dir", str(tiny), "--base", "--rag", "--encoder-dir", str(encoder_dir()),
              "--chunks", str(chunks), "--top-k", "2", "--max-new-tokens", "6"],
             "How many days do I have to submit an expense claim?\n")  # then EOF
    assert p.returncode == 0, p.stderr
    assert "base model" in p.stdout and len(answers(p.stdout)) == 1
    urls = re.findall(r"\[\d\] .+ — (\S+) \(score", p.stdout)
    assert len(urls) == 2 and urls[0] == "https://example.org/policies/expenses", p.stdout
    assert set(urls) <= {c["url"] for c in CHUNKS}


def test_missing_models_is_one_clear_line(tmp_path):
    p = chat(["--model-dir", str(tmp_path / "nope")], "hello\n", timeout=60)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert "not found" in p.stderr and "dvc repro" in p.stderr and "dvc pull" in p.stderr
    student = tmp_path / "student"
    student.mkdir()
    (student / "config.json").write_text("{}")
    p = chat(["--model-dir", str(student), "--adapter-dir", str(tmp_path / "no-adapter")], "", timeout=60)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert "LoRA adapter" in p.stderr and "dvc repro" in p.stderr


def test_adapter_trained_with_another_template_is_refused(tiny, adapter, tmp_path):
    other = shutil.copytree(adapter, tmp_path / "adapter")
    (other / TRAIN_INFO).write_text(json.dumps({"chat_template_sha": "0123456789abcdef"}))
    with pytest.raises(ChatbotError, match="chat template mismatch.*0123456789abcdef"):
        Chatbot.load(tiny, other)


def test_console_script_dispatches_serve(tiny):
    help_ = subprocess.run([sys.executable, "-m", "policytune.tools.cli", "--help"], cwd=REPO, env=ENV,
                           capture_output=True, text=True, timeout=30)
    assert help_.returncode == 0 and "chat" in help_.stdout and "serve" in help_.stdout
    proc = subprocess.Popen([sys.executable, "-m", "policytune.tools.cli", "serve", "--model-dir", str(tiny), "--base",
                             "--no-rag", "--port", "0", "--max-new-tokens", "4"],
                            cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # "serving base on http://127.0.0.1:PORT/ ..." once loaded
        m = re.search(r"on (http://127\.0\.0\.1:\d+)/", line)
        assert m, (line, proc.poll())
        url = m.group(1)
        status, _, body = request(url, "GET", "/v1/models")
        assert status == 200 and [x["id"] for x in json.loads(body)["data"]] == ["base"]
        status, body = post_chat(url, {"messages": [{"role": "user", "content": "hi"}]})
        assert status == 200 and body["model"] == "base" and body["usage"]["completion_tokens"] <= 4
        status, err = post_chat(url, {"model": "finetuned", "messages": [{"role": "user", "content": "hi"}]})
        assert status == 404 and "base model only" in err["error"]["message"]
        status, err = post_chat(url, {"messages": [{"role": "user", "content": "hi"}], "rag": True})
        assert status == 400 and "--no-rag" in err["error"]["message"]
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_the_best_variant_answers_by_default(tmp_path):
    """chat/serve answer with the evaluate stage's best variant by fact recall unless told otherwise."""
    from policytune.app.chat import resolve_variant
    from policytune.core.records import write_json

    ev = tmp_path / "eval.json"
    write_json(ev, {"base.fact_recall.mean": 0.1, "finetuned.fact_recall.mean": 0.2,
                    "base_rag.fact_recall.mean": 0.5, "finetuned_rag.fact_recall.mean": 0.7})
    assert resolve_variant("best", eval_json=ev)[:2] == (True, True)
    write_json(ev, {"base.fact_recall.mean": 0.3, "finetuned.fact_recall.mean": 0.2,
                    "base_rag.fact_recall.mean": 0.6, "finetuned_rag.fact_recall.mean": 0.5})
    ft, rag, why = resolve_variant("best", eval_json=ev)
    assert (ft, rag) == (False, True) and "best variant" in why
    assert resolve_variant("finetuned", eval_json=ev)[:2] == (True, False)  # named
    assert resolve_variant("best", base=True, eval_json=ev)[:2] == (False, False)  # --base wins
    assert resolve_variant("best", rag=True, eval_json=ev)[:2] == (True, True)  # --rag alone: fine-tuned + RAG
    ft, rag, why = resolve_variant("best", eval_json=tmp_path / "missing.json")
    assert (ft, rag) == (True, False) and "dvc repro evaluate" in why
    (tmp_path / "bad.json").write_text("[1, 2")
    assert resolve_variant("best", eval_json=tmp_path / "bad.json")[:2] == (True, False)
