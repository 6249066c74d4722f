"""Checkpoint identity: the base model's identity and the run fingerprint a checkpoint must match."""

from __future__ import annotations

import hashlib

from policytune.core.records import sha256_file
from policytune.training.checkpoints import base_identity, load_checkpoint, run_fingerprint, save_checkpoint
from policytune.training.config import TrainConfig


def test_base_identity_is_the_manifest_else_config_and_weights(tmp_path):
    d = tmp_path / "base"
    (d / "sub").mkdir(parents=True)
    for name, text in (("config.json", "{}"), ("model.safetensors", "w"), ("chat.jinja", "t"),
                       ("notes.txt", "ignored"), ("sub/x.json", "ignored: not top level")):
        (d / name).write_text(text)
    h = hashlib.sha256()  # the formula train used before the shared helper: name + sha256 per file
    for p in sorted(d.glob("*")):
        if p.suffix in (".json", ".safetensors", ".bin", ".jinja") and p.is_file():
            h.update(p.name.encode() + sha256_file(p).encode())
    assert base_identity(str(d)) == h.hexdigest()
    (d / "policytune_model.json").write_text('{"spec": "x"}')
    assert base_identity(str(d)) == sha256_file(d / "policytune_model.json")


def test_fingerprint_ignores_paths_and_resume_knobs_and_checkpoint_round_trips(tmp_path):
    a, b = TrainConfig(), TrainConfig(nproc=2, grad_accum=1, merge=True, save_every_steps=3)
    b.paths.adapter = "elsewhere"
    fp = run_fingerprint(a, {"train": "t"}, "base", 1)
    assert fp == run_fingerprint(b, {"train": "t"}, "base", 1)
    assert fp != run_fingerprint(a, {"train": "t"}, "base", 2)  # step composition differs
    assert fp != run_fingerprint(TrainConfig(seed=1), {"train": "t"}, "base", 1)
    path = tmp_path / "ck" / "last.pt"
    save_checkpoint(path, {"fingerprint": fp, "state": {"step": 3}})
    assert load_checkpoint(path, fp)["state"] == {"step": 3}
    assert load_checkpoint(path, "other") is None
    assert load_checkpoint(tmp_path / "missing.pt", fp) is None
