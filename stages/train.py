"""train: LoRA fine-tuning of the student on the chat-format train split, early-stopped on val.

Reads   ``base_dir`` (models/student), data/raft/train.jsonl, data/raft/val.jsonl (the raft stage:
        closed-book and retrieval-augmented rows with ``messages`` = system/user/assistant, plus
        lineage such as ``qa_id``)
Params  ``train`` (see :class:`TrainConfig`; every knob has help text)
Writes  models/adapter/      the BEST LoRA adapter (lowest eval loss, not the last one) in PEFT
                             format, the tokenizer (with the chat template it trained under),
                             README.md model card, policytune_train.json (base model, data
                             sha256s, params, ``chat_template_sha`` that evaluate must match)
        models/merged/       base + best adapter merged (``merge: true``); else a README only
        models/checkpoints/  resume state: a killed run resumes, not restarts (git-ignored and not a
                             DVC out: scratch state, not an artifact; a checkpoint of other data,
                             params or base model is ignored)
        metrics/train.json   best_step, best_eval_loss, base_eval_loss, epochs_run, steps,
                             tokens_seen, useful_tokens_per_s, wall_s, stopped_early, ...
        metrics/train_curve/train.json, eval.json   loss per step (DVC plots)

What is trained and how (each point is tested in tests/unit/training/ and tests/stages/test_train.py):

- Loss on assistant tokens only. Each assistant turn is found by rendering the tokenizer's
  chat template up to the turn with the generation prompt (exactly the prompt inference uses)
  and up to the turn's end; the text in between (answer + end-of-turn marker) carries the
  labels, everything else is -100. The prompt's ids are exactly those inference feeds; the
  answer's ids are its natural tokenization after that prompt. A template that is not
  prefix-consistent, a row whose labels come out empty, a micro-batch with an empty label
  mask, a prompt longer than ``max_length``: clear errors. A row longer than ``max_length`` is an error too (or, with
  ``overlong: drop``, dropped and counted) -- never silently truncated.
- No compute on padding or on positions without loss: micro-batches are length-grouped under
  a token budget (``batch_tokens``) and padded only to their longest row; the prefix every row
  of a micro-batch shares (system prompt + chat header) is run once and its keys/values are
  broadcast to the rows (exact: gradients flow through it); logits (the 49k-vocab lm_head)
  are computed only at the positions that predict an assistant token; the LoRA params alone
  go to a fused AdamW. Weights are bf16 where the CPU/GPU runs bf16 natively, else fp32
  (``dtype: auto``); LoRA params stay fp32.
- One optimizer step = ``nproc x grad_accum`` micro-batches; the loss is the mean over every
  assistant token of the step, so a 2-process run equals a 1-process run with twice the
  ``grad_accum``. Under torchrun each rank takes every nproc-th micro-batch of a step
  (disjoint data); gradients of the LoRA params are summed with one all-reduce per step;
  only rank 0 writes.
- Evaluation every ``eval_every_steps`` steps (0: at each epoch end) and at the last step;
  early stopping after ``early_stopping.patience`` evals without an improvement larger than
  ``min_delta``. The base model's eval loss is measured first, on the same val set.
- Checkpoints (one file, written atomically, after each eval and every ``save_every_steps``)
  hold LoRA weights, best weights, optimizer, scheduler, early-stopping state, the curve and
  the data position (epoch, step). The data order is a pure function of (seed, epoch) and
  every step reseeds torch from (seed, rank, step) -- dropout masks included -- so a resumed
  run continues exactly where the killed one stopped. A checkpoint made with other data,
  params or base model is ignored (logged), never resumed from.
- ``POLICYTUNE_TRAIN_TRACE=PATH``: each rank appends the row indices it trained on, per step,
  to ``PATH.rank<R>.jsonl`` (used by the DDP test to prove disjoint shards).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from pathlib import Path

import torch

from policytune.core.params import load_section, to_dict
from policytune.core.progress import get_logger
from policytune.core.records import read_jsonl, sha256_file, write_json
from policytune.core.stage import stage_parser
from policytune.lm.chat_format import template_sha
from policytune.training.batching import eval_batches
from policytune.training.checkpoints import CHECKPOINT_FILE, base_identity, load_checkpoint, run_fingerprint
from policytune.training.config import TrainConfig, TrainError, TrainPaths, check_config
from policytune.training.dist import Dist, init_dist, relaunch_under_torchrun
from policytune.training.encode import encode_rows
from policytune.training.export import (base_manifest, export_adapter, export_merged, peak_rss_mb_max,
                                        write_curves)
from policytune.training.lora import StudentModel, build_model, load_tokenizer
from policytune.training.loop import FitResult, fit, make_evaluator

log = get_logger("train")

# The stage's paths are params (train.paths, see TrainPaths); an option given here overrides one.
PATHS = dataclasses.asdict(TrainPaths())


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = stage_parser(__doc__, "train", PATHS, TrainConfig)
    ap.set_defaults(**dict.fromkeys(PATHS))  # not given: train.paths in params.yaml decides
    args = ap.parse_args(argv)
    wall0 = time.perf_counter()
    cfg = load_section(TrainConfig, "train", args.params)
    for key in PATHS:
        if getattr(args, key) is not None:
            setattr(cfg.paths, key, getattr(args, key))
    check_config(cfg)
    if cfg.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return relaunch_under_torchrun(cfg.nproc, argv, "stages.train")

    dist = init_dist()
    if dist.device.type == "cpu":
        torch.set_num_threads(cfg.num_threads or max(1, (os.cpu_count() or 1) // int(
            os.environ.get("LOCAL_WORLD_SIZE", dist.world))))
    try:
        return _train(cfg, dist, wall0)
    except TrainError as e:
        log.error("%s", e)
        raise SystemExit(f"train: {e}") from None
    finally:
        if dist.world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _read_rows(p: TrainPaths) -> tuple[list[dict], list[dict]]:
    for what, path in (("train", p.train), ("val", p.val)):
        if not Path(path).is_file():
            raise TrainError(f"{path} not found; run the {'augment' if what == 'train' else 'split'} stage first")
    train_rows, val_rows = read_jsonl(p.train), read_jsonl(p.val)
    if not train_rows:
        raise TrainError(f"empty train set: {p.train} has no rows")
    if not val_rows:
        raise TrainError(f"empty val set: {p.val} has no rows (early stopping needs a val set)")
    return train_rows, val_rows


def _encode(tokenizer, cfg: TrainConfig, train_rows: list[dict], val_rows: list[dict]):
    p = cfg.paths
    train_ex, train_stats = encode_rows(tokenizer, train_rows, cfg.max_length, cfg.overlong, "train")
    val_ex, val_stats = encode_rows(tokenizer, val_rows, cfg.max_length, cfg.overlong, "val")
    if not train_ex:
        raise TrainError(f"empty train set: all {len(train_rows)} rows of {p.train} were dropped")
    if not val_ex:
        raise TrainError(f"empty val set: all {len(val_rows)} rows of {p.val} were dropped")
    return train_ex, train_stats, val_ex, val_stats


def _train(cfg: TrainConfig, dist: Dist, wall0: float) -> int:
    p = cfg.paths
    train_rows, val_rows = _read_rows(p)
    tokenizer = load_tokenizer(cfg.base_dir)
    train_ex, train_stats, val_ex, val_stats = _encode(tokenizer, cfg, train_rows, val_rows)

    student = build_model(cfg, dist.device)
    model = student.model
    if dist.main:
        log.info("base %s: %.1fM params, %s on %s x%d (%d threads); LoRA r=%d on %s: %.2fM params",
                 cfg.base_dir, student.n_base / 1e6, student.weight_dtype, dist.device, dist.world,
                 torch.get_num_threads(), cfg.lora.r, ",".join(cfg.lora.target_modules), student.n_lora / 1e6)
        log.info("train %d rows (%d assistant tokens), val %d rows", len(train_ex),
                 sum(e.n_labels for e in train_ex), len(val_ex))

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    evaluate = make_evaluator(model, eval_batches(val_ex, pad_id, 2 * cfg.batch_tokens, cfg.share_prefix,
                                                  dist.device), dist)

    data = {k: {"path": path, "sha256": sha256_file(path), "rows": len(rows)}
            for k, path, rows in (("train", p.train, train_rows), ("val", p.val, val_rows))}
    fingerprint = run_fingerprint(cfg, {k: v["sha256"] for k, v in data.items()},
                                  base_identity(cfg.base_dir), dist.world)
    ckpt_path = Path(p.checkpoints) / CHECKPOINT_FILE
    resume = None
    if cfg.resume and dist.main:
        resume = load_checkpoint(ckpt_path, fingerprint)
    resume = dist.broadcast(resume)

    result = fit(model, train_ex, evaluate, cfg, dist, pad_id, checkpoint=ckpt_path,
                 fingerprint=fingerprint, resume=resume, trace=os.environ.get("POLICYTUNE_TRAIN_TRACE"))
    rss = peak_rss_mb_max(dist)
    if not dist.main:
        return 0
    info = {
        "base_dir": cfg.base_dir, "base_model": base_manifest(cfg.base_dir),
        "chat_template_sha": template_sha(tokenizer), "data": data, "params": to_dict(cfg),
        "best_step": result.stopper.best_step, "best_eval_loss": result.stopper.best_loss,
        "base_eval_loss": result.state.base_eval_loss, "steps": result.state.step,
        "epochs_run": round(result.state.curve_train[-1]["epoch"], 3) if result.state.curve_train else 0.0,
        "stopped_early": result.state.stopped_early,
    }
    export_adapter(model, tokenizer, result.best_lora, Path(p.adapter), info)
    export_merged(model, tokenizer, Path(p.merged), cfg.merge, student.saved_dtype)
    write_curves(Path(p.curve), result.state)
    metrics = _metrics(cfg, dist, result, info, wall0, rss, student, train_stats, val_stats)
    write_json(p.metrics, metrics)
    log.info("best eval loss %.4f at step %d (base %.4f); %d steps, %.0f useful tok/s, wall %.0fs; "
             "adapter -> %s", result.stopper.best_loss, result.stopper.best_step, result.state.base_eval_loss,
             result.state.step, metrics["useful_tokens_per_s"], metrics["wall_s"], p.adapter)
    return 0


def _metrics(cfg: TrainConfig, dist: Dist, result: FitResult, info: dict, wall0: float, rss: float,
             student: StudentModel, train_stats: dict, val_stats: dict) -> dict:
    """metrics/train.json (its keys in this order)."""
    state, stopper = result.state, result.stopper
    return {
        "best_step": stopper.best_step, "best_eval_loss": stopper.best_loss,
        "base_eval_loss": state.base_eval_loss,
        "eval_loss_improvement": state.base_eval_loss - stopper.best_loss,
        "epochs_run": info["epochs_run"], "steps": state.step, "total_steps": result.total_steps,
        "steps_per_epoch": max(1, result.total_steps // cfg.epochs), "stopped_early": state.stopped_early,
        "tokens_seen": state.tokens_seen, "tokens_run": state.tokens_run,
        "padding_and_prefix_saving": round(1 - state.tokens_run / max(1, state.tokens_padded), 4),
        "useful_tokens_per_s": round(state.tokens_seen / max(state.train_time_s, 1e-9), 2),
        "train_time_s": round(state.train_time_s, 2), "eval_time_s": round(state.eval_time_s, 2),
        "wall_s": round(time.perf_counter() - wall0, 2), "peak_rss_mb": round(rss, 1),
        "resumed_from_step": state.resumed_from_step, "world_size": dist.world,
        "dtype": str(student.weight_dtype).removeprefix("torch."), "threads": torch.get_num_threads(),
        "base_params": student.n_base, "lora_params": student.n_lora,
        "train_rows": train_stats, "val_rows": val_stats,
        "chat_template_sha": info["chat_template_sha"],
    }


if __name__ == "__main__":
    sys.exit(main())
