"""The stage's outputs: the best adapter (PEFT folder + tokenizer + model card + train record),
the merged model, the loss curves, and what the record says about the base model."""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
from pathlib import Path
from typing import Optional, Sequence

import torch
from huggingface_hub import EvalResult, ModelCardData

from policytune.core.files import replace_dir
from policytune.core.records import atomic_write_text, write_json
from policytune.lm.adapters import TRAIN_INFO
from policytune.training.checkpoints import base_identity
from policytune.training.dist import Dist
from policytune.training.lora import load_lora_state
from policytune.training.loop import TrainState


CARD_LICENSE = "apache-2.0"  # the project's license (pyproject, LICENSE); the model_card stage can override it
_HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_GGUF_QUANT = re.compile(r"[.-]((?:I?Q\d+(?:_[A-Z0-9]+)*)|F16|F32|BF16)\.gguf$", re.IGNORECASE)


def gguf_origin(manifest: dict) -> Optional[dict]:
    """What a ``policytune_model.json`` says about a base built by dequantizing a GGUF file (a
    catalog language model or a local ``.gguf``): its file names, quantization type (read off the
    file name, e.g. ``Q4_1``; None when the name does not say) and sha256; None otherwise."""
    src = manifest.get("source") or {}
    if src.get("type") not in ("catalog", "gguf") or manifest.get("kind", "causal_lm") != "causal_lm":
        return None
    files = [src["file"]] if src.get("file") else [p["file"] for p in src.get("packages") or [] if p.get("file")]
    quant = next((m.group(1).upper() for f in files if (m := _GGUF_QUANT.search(Path(f).name))), None)
    return {"files": files, "quantization": quant, "sha256": src.get("sha256")}


def base_manifest(base_dir: str) -> dict:
    m = Path(base_dir) / "policytune_model.json"
    if m.is_file():
        info = json.loads(m.read_text())
        src = info.get("source", {})
        return {"spec": info.get("spec"), "upstream": src.get("upstream") or src.get("hub_id"),
                "sha256": src.get("sha256"), "n_params": info.get("n_params"), "dtype": info.get("dtype"),
                "source_type": src.get("type"), "gguf": gguf_origin(info)}
    return {"spec": base_dir, "upstream": None, "sha256": base_identity(base_dir)}


def base_model_id(info: dict) -> str:
    """The card's ``base_model``: the Hugging Face id the base was made from when known, else its
    spec (catalog name, path) or folder."""
    base = info["base_model"]
    upstream = base.get("upstream")
    if upstream and _HF_ID.match(str(upstream)):
        return str(upstream)
    return str(base.get("spec") or info["base_dir"])


def card_data(info: dict, *, license: str = CARD_LICENSE, datasets: Sequence[str] = (),
              eval_results: Sequence[EvalResult] = (), model_name: Optional[str] = None) -> ModelCardData:
    """The card's Hugging Face front matter; ``eval_results`` become its ``model-index``."""
    return ModelCardData(
        license=license, library_name="peft", pipeline_tag="text-generation", base_model=base_model_id(info),
        datasets=list(datasets) or None, tags=["lora", "peft", "policytune"],
        model_name=(model_name or f"{base_model_id(info).rsplit('/', 1)[-1]}-policytune-lora") if eval_results else None,
        eval_results=list(eval_results) or None)


def dequantized_line(base: dict) -> Optional[str]:
    """The card's sentence on a base dequantized from a GGUF file (None for any other base)."""
    g = base.get("gguf")
    if not g:
        return None
    files = ", ".join(f"`{f}`" for f in g.get("files") or []) or "a GGUF file"
    what = f"a {g['quantization']} GGUF" if g.get("quantization") else "a GGUF file (quantization type not in its name)"
    upstream = base.get("upstream") or base.get("spec")
    return (f"**Base weights dequantized from {what}**: the base folder was built by `prepare_models` from "
            f"{files} (sha256 `{g.get('sha256')}`), dequantized and saved as {base.get('dtype')}. The adapter was "
            f"trained on these dequantized weights, which are not bit-identical to the original "
            f"{upstream} release; use it with the same base folder.")


def model_card(info: dict, *, license: str = CARD_LICENSE, datasets: Sequence[str] = (),
               eval_results: Sequence[EvalResult] = (), evaluation: Optional[str] = None,
               model_name: Optional[str] = None) -> str:
    """The adapter's README.md: Hugging Face front matter, then what was trained on what.

    The ``train`` stage writes it without evaluation (``evaluate`` runs after it); the
    ``model_card`` stage writes the complete card: ``eval_results`` (the model-index) and the
    ``evaluation`` section (Markdown) from metrics/eval.json."""
    base = info["base_model"]
    front = card_data(info, license=license, datasets=datasets, eval_results=eval_results,
                      model_name=model_name).to_yaml()
    deq = dequantized_line(base)
    deq = f"\n{deq}\n" if deq else ""
    evaluation = evaluation or ("Not in this card: `train` runs before `evaluate`. The `model_card` stage writes "
                                "the complete card (this one plus the evaluation results and their model-index) "
                                "to `models/card/README.md`.")
    return f"""---
{front}
---
# policytune LoRA adapter

LoRA adapter for **{base.get('upstream') or info['base_dir']}** (base folder `{info['base_dir']}`),
fine-tuned by the policytune `train` stage on teacher-generated policy QA pairs. This is the
**best** checkpoint by eval loss, not the last one.
{deq}
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

## Evaluation

{evaluation.strip()}

## Use

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
