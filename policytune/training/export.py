"""The stage's outputs: the best adapter (PEFT folder + tokenizer + model card + train record),
the merged model, the loss curves, and what the record says about the base model."""

from __future__ import annotations

import json
import os
import resource
import shutil
from pathlib import Path

import torch

from policytune.core.files import replace_dir
from policytune.core.records import atomic_write_text, write_json
from policytune.lm.adapters import TRAIN_INFO
from policytune.training.checkpoints import base_identity
from policytune.training.dist import Dist
from policytune.training.lora import load_lora_state
from policytune.training.loop import TrainState


def base_manifest(base_dir: str) -> dict:
    m = Path(base_dir) / "policytune_model.json"
    if m.is_file():
        info = json.loads(m.read_text())
        src = info.get("source", {})
        return {"spec": info.get("spec"), "upstream": src.get("upstream") or src.get("hub_id"),
                "sha256": src.get("sha256"), "n_params": info.get("n_params"), "dtype": info.get("dtype")}
    return {"spec": base_dir, "upstream": None, "sha256": base_identity(base_dir)}


def model_card(info: dict) -> str:
    base = info["base_model"]
    return f"""---
library_name: peft
base_model: {base.get('upstream') or info['base_dir']}
tags: [lora, policytune]
---
# policytune LoRA adapter

LoRA adapter for **{base.get('upstream') or info['base_dir']}** (base folder `{info['base_dir']}`),
fine-tuned by the policytune `train` stage on teacher-generated policy QA pairs. This is the
**best** checkpoint by eval loss, not the last one.

| | |
|---|---|
| best step | {info['best_step']} of {info['steps']} |
| best eval loss | {info['best_eval_loss']:.4f} |
| base model eval loss (same val set) | {info['base_eval_loss']:.4f} |
| epochs run | {info['epochs_run']} (stopped early: {info['stopped_early']}) |
| chat template sha | `{info['chat_template_sha']}` (evaluate refuses a tokenizer whose template differs) |

Data (sha256):
- train `{info['data']['train']['path']}`: `{info['data']['train']['sha256']}` ({info['data']['train']['rows']} rows)
- val `{info['data']['val']['path']}`: `{info['data']['val']['sha256']}` ({info['data']['val']['rows']} rows)

Base model manifest: `{json.dumps(base, sort_keys=True)}`

Loss on assistant tokens only; prompts are rendered with the tokenizer saved in this folder.

```python
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
base = AutoModelForCausalLM.from_pretrained("{info['base_dir']}")
model = PeftModel.from_pretrained(base, "<this folder>")
tokenizer = AutoTokenizer.from_pretrained("<this folder>")
```

Params (`params.yaml` section `train`):

```json
{json.dumps(info['params'], indent=2, sort_keys=True)}
```
"""


def export_adapter(model, tokenizer, best_lora: dict, out_dir: Path, info: dict) -> None:
    """Best LoRA weights -> PEFT folder + tokenizer + model card + policytune_train.json."""
    load_lora_state(model, best_lora)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    build = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(build, ignore_errors=True)
    model.save_pretrained(build)
    tokenizer.save_pretrained(build)
    write_json(build / TRAIN_INFO, info)
    atomic_write_text(build / "README.md", model_card(info))
    replace_dir(build, out_dir)


def export_merged(model, tokenizer, out_dir: Path, merge: bool, saved_dtype: str) -> None:
    """Base with the (already loaded) best adapter folded in, or a note when merge is off."""
    build = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(build, ignore_errors=True)
    build.mkdir(parents=True)
    if merge:
        merged = model.merge_and_unload()
        dtype = getattr(torch, saved_dtype, torch.float32)
        merged.to(dtype).save_pretrained(build)
        tokenizer.save_pretrained(build)
        atomic_write_text(build / "README.md", "Base model with the best policytune LoRA adapter merged in.\n")
    else:
        atomic_write_text(build / "README.md", "train.merge is false: no merged model. "
                          "Set train.merge: true to write base + adapter merged here.\n")
    replace_dir(build, out_dir)


def write_curves(folder: Path, state: TrainState) -> None:
    write_json(folder / "train.json", state.curve_train)
    write_json(folder / "eval.json", state.curve_eval)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_rss_mb_max(dist: Dist) -> float:
    """The largest peak RSS (MB) of all ranks (every rank must call it)."""
    rss = torch.tensor([peak_rss_mb()], dtype=torch.float64, device=dist.device)
    if dist.world > 1:
        torch.distributed.all_reduce(rss, op=torch.distributed.ReduceOp.MAX)
    return rss.item()
