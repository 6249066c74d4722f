"""The loop: early stopping on a scripted sequence, the exported adapter is the best one (not
the last), a NaN loss is a clear error."""

from __future__ import annotations

import pytest
import torch

from policytune.core.params import to_dict
from policytune.lm.chat_format import template_sha
from policytune.training import loop
from policytune.training.config import EarlyStoppingParams, LoraParams, TrainConfig, TrainError
from policytune.training.dist import Dist
from policytune.training.export import export_adapter
from policytune.training.loop import EarlyStopper, fit
from policytune.training.lora import add_lora, load_base_model, lora_state


def test_early_stopper_on_a_scripted_sequence():
    s = EarlyStopper(patience=2, min_delta=0.05)
    seq = [3.0, 2.5, 2.48, 2.2, 2.3, 2.19, 2.4]
    stopped_at = None
    for step, loss in enumerate(seq, 1):
        s.update(step, loss)
        if s.should_stop:
            stopped_at = step
            break
    # 2.48 is not better than 2.5 by min_delta; 2.19 is not better than 2.2 by min_delta
    assert (s.best_step, s.best_loss, stopped_at) == (4, 2.2, 6)
    assert not EarlyStopper(patience=0).should_stop


def _fit_cfg(**kw) -> TrainConfig:
    cfg = TrainConfig(batch_tokens=200, epochs=3, learning_rate=0.05, eval_every_steps=1,
                      lora=LoraParams(dropout=0.0), warmup_ratio=0.0)
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def test_fit_exports_the_best_adapter_not_the_last(tiny_model_dir, tokenizer, examples, tmp_path):
    model = add_lora(load_base_model(str(tiny_model_dir), "float32", torch.device("cpu")),
                     LoraParams(dropout=0.0), seed=0)
    script = iter([5.0, 4.0, 3.0, 3.5, 3.2, 3.1, 9.9, 9.9])  # base, then one eval per step
    snapshots = []

    def scripted_eval():
        snapshots.append(lora_state(model))
        return next(script)

    cfg = _fit_cfg(early_stopping=EarlyStoppingParams(patience=3, min_delta=0.0))
    res = fit(model, examples, scripted_eval, cfg, Dist(), pad_id=0)
    assert res.stopper.best_step == 2 and res.stopper.best_loss == 3.0
    assert res.state.stopped_early and res.state.step == 5  # 3.5, 3.2, 3.1: three evals without a new best
    assert res.state.base_eval_loss == 5.0
    assert [e["eval_loss"] for e in res.state.curve_eval] == [5.0, 4.0, 3.0, 3.5, 3.2, 3.1]
    best = snapshots[2]  # weights evaluated at step 2
    last = lora_state(model)
    assert any(not torch.equal(best[n], last[n]) for n in best)
    for n in best:
        assert torch.equal(res.best_lora[n], best[n])

    info = {"base_dir": str(tiny_model_dir), "base_model": {"upstream": None}, "chat_template_sha":
            template_sha(tokenizer), "data": {k: {"path": k, "sha256": "x", "rows": 1} for k in ("train", "val")},
            "params": to_dict(cfg), "best_step": 2, "best_eval_loss": 3.0, "base_eval_loss": 5.0,
            "steps": 5, "epochs_run": 1.0, "stopped_early": True}
    export_adapter(model, tokenizer, res.best_lora, tmp_path / "adapter", info)
    from safetensors.torch import load_file
    saved = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    best_by_peft_name = {k.replace(".default", ""): v for k, v in best.items()}
    assert set(saved) == set(best_by_peft_name)
    for n, t in saved.items():
        torch.testing.assert_close(t, best_by_peft_name[n])


def test_nan_loss_is_a_clear_error(tiny_model_dir, examples, monkeypatch):
    model = add_lora(load_base_model(str(tiny_model_dir), "float32", torch.device("cpu")),
                     LoraParams(), seed=0)
    real = loop.batch_loss
    monkeypatch.setattr(loop, "batch_loss", lambda m, b: real(m, b) * float("nan"))
    with pytest.raises(TrainError, match=r"train loss is nan at step 1"):
        fit(model, examples, lambda: 1.0, _fit_cfg(), Dist(), pad_id=0)
