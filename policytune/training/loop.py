"""The training loop: optimizer steps of ``nproc x grad_accum`` micro-batches, evaluation,
early stopping on the eval loss and checkpoints, resumable exactly where a killed run stopped."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from policytune.core.progress import Progress, get_logger
from policytune.training.batching import Batch, collate, group_steps, plan_batches, shared_prefix_len
from policytune.training.checkpoints import save_checkpoint
from policytune.training.config import SCHEDULERS, TrainConfig, TrainError
from policytune.training.dist import Dist, allreduce_grads
from policytune.training.encode import Example
from policytune.training.lora import batch_loss, load_lora_state, lora_state, trainable

log = get_logger("train")


@dataclass
class EarlyStopper:
    patience: int
    min_delta: float = 0.0
    best_loss: float = math.inf
    best_step: int = -1
    bad_evals: int = 0

    def update(self, step: int, loss: float) -> bool:
        """Record an eval; True when it is a new best (the adapter to export)."""
        if loss < self.best_loss - self.min_delta:
            self.best_loss, self.best_step, self.bad_evals = loss, step, 0
            return True
        self.bad_evals += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad_evals >= self.patience


@dataclass
class TrainState:
    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    tokens_seen: int = 0          # loss-bearing tokens trained on (all ranks)
    tokens_run: int = 0           # tokens the model ran (shared prefixes once, no padding)
    tokens_padded: int = 0        # rows x longest row (what plain padded batches would run)
    train_time_s: float = 0.0     # time inside optimizer steps (no eval, no checkpoint I/O)
    eval_time_s: float = 0.0
    base_eval_loss: float = math.nan
    stopped_early: bool = False
    done: bool = False
    resumed_from_step: int = 0
    curve_train: list = field(default_factory=list)
    curve_eval: list = field(default_factory=list)


def make_evaluator(model, batches: list[Batch], dist: Dist) -> Callable[[], float]:
    """Token-weighted mean eval loss over every labelled val token (val batches split over ranks)."""
    mine = batches[dist.rank::dist.world]

    def evaluate() -> float:
        was_training = model.training
        model.eval()
        total = torch.zeros(2, dtype=torch.float64, device=dist.device)
        with torch.no_grad():
            for b in mine:
                total[0] += batch_loss(model, b).double()
                total[1] += b.n_labels
        model.train(was_training)
        dist.all_reduce_(total)
        loss = (total[0] / total[1]).item()
        if not math.isfinite(loss):
            raise TrainError(f"eval loss is {loss}")
        return loss

    return evaluate


def step_seed(seed: int, rank: int, step: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{rank}:{step}".encode()).digest()[:8], "little") >> 1


@dataclass
class FitResult:
    state: TrainState
    stopper: EarlyStopper
    best_lora: dict
    total_steps: int


def plan_epochs(lengths: list[int], cfg: TrainConfig, world: int) -> list[list[list[list[int]]]]:
    """Each epoch's optimizer steps, each a list of ``grad_accum x world`` micro-batches (a pure
    function of seed and epoch)."""
    per_step = cfg.grad_accum * world
    return [group_steps(plan_batches(lengths, cfg.batch_tokens, cfg.seed, e), per_step)
            for e in range(cfg.epochs)]


def make_optimizer(params: list[torch.nn.Parameter], cfg: TrainConfig, device: torch.device,
                   total_steps: int):
    """Fused AdamW over the LoRA params and the warmup + decay schedule of ``cfg.lr_scheduler``."""
    warmup = cfg.warmup_steps or int(round(cfg.warmup_ratio * total_steps))

    from transformers import get_scheduler
    fused = device.type in ("cpu", "cuda")
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, fused=fused)
    sched = get_scheduler(SCHEDULERS[cfg.lr_scheduler], opt, num_warmup_steps=warmup,
                          num_training_steps=total_steps)
    return opt, sched


@dataclass
class _Run:
    """What one :func:`fit` works on: model, data plan, optimizer and the state it checkpoints."""
    model: Any
    examples: list[Example]
    lengths: list[int]
    plans: list[list[list[list[int]]]]
    evaluate: Callable[[], float]
    cfg: TrainConfig
    dist: Dist
    pad_id: int
    params: list[torch.nn.Parameter]
    opt: Any
    sched: Any
    total_steps: int
    stopper: EarlyStopper
    state: TrainState = field(default_factory=TrainState)
    best_lora: dict = field(default_factory=dict)
    checkpoint: Optional[Path] = None
    fingerprint: str = ""

    def save(self) -> None:
        if self.checkpoint is None:
            return
        if self.dist.main:
            save_checkpoint(self.checkpoint, {
                "version": 1, "fingerprint": self.fingerprint, "state": dataclasses.asdict(self.state),
                "stopper": dataclasses.asdict(self.stopper), "lora": lora_state(self.model),
                "best_lora": self.best_lora, "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict()})
        self.dist.barrier()


def _resume(run: _Run, resume: dict) -> None:
    """Weights, optimizer, scheduler, early stopping and data position of a checkpoint."""
    load_lora_state(run.model, resume["lora"])
    run.opt.load_state_dict(resume["optimizer"])
    run.sched.load_state_dict(resume["scheduler"])
    run.stopper = EarlyStopper(**resume["stopper"])
    run.state = state = TrainState(**resume["state"])
    run.best_lora = resume["best_lora"]
    state.resumed_from_step = state.step
    if run.dist.main:
        log.info("resumed from step %d/%d (epoch %d, best eval loss %.4f at step %d)", state.step,
                 run.total_steps, state.epoch + 1, run.stopper.best_loss, run.stopper.best_step)


def _evaluate_base(run: _Run) -> None:
    """A fresh run: the base model's eval loss first (step 0 of the eval curve)."""
    state = run.state
    t0 = time.perf_counter()
    state.base_eval_loss = run.evaluate()
    state.eval_time_s += time.perf_counter() - t0
    state.curve_eval.append({"step": 0, "epoch": 0.0, "eval_loss": state.base_eval_loss})
    if run.dist.main:
        log.info("base model eval loss %.4f (before training)", state.base_eval_loss)


def _optimizer_step(run: _Run, epoch: int, s: int, trace_f) -> tuple[float, float, int]:
    """Step ``s`` of ``epoch``: this rank's micro-batches forward/backward, the grads summed over
    ranks, clipped and applied. Returns (mean loss of the step, its lr, its loss-bearing tokens)."""
    cfg, dist, state, examples, lengths = run.cfg, run.dist, run.state, run.examples, run.lengths
    step_mbs = run.plans[epoch][s]
    mine = step_mbs[dist.rank::dist.world]
    n_global = sum(examples[i].n_labels for mb in step_mbs for i in mb)
    torch.manual_seed(step_seed(cfg.seed, dist.rank, state.step))
    loss_sum = torch.zeros((), dtype=torch.float32, device=dist.device)
    for mb in mine:
        batch = collate([examples[i] for i in mb], run.pad_id, cfg.share_prefix, dist.device)
        loss = batch_loss(run.model, batch)
        (loss / n_global).backward()
        loss_sum += loss.detach()
    for mb in step_mbs:  # every rank counts the whole step's tokens (the same numbers)
        exs = [examples[i] for i in mb]
        p = shared_prefix_len(exs) if cfg.share_prefix else 0
        state.tokens_run += p + sum(len(e.input_ids) - 1 - p for e in exs)
        state.tokens_padded += len(mb) * max(lengths[i] - 1 for i in mb)
    if trace_f:
        trace_f.write(json.dumps({"step": state.step, "rank": dist.rank, "rows":
                                  [examples[i].row for mb in mine for i in mb]}) + "\n")
    step_loss = allreduce_grads(run.params, loss_sum, dist).item() / n_global
    if not math.isfinite(step_loss):
        raise TrainError(
            f"train loss is {step_loss} at step {state.step + 1} (epoch {epoch + 1}); "
            "lower train.learning_rate, or use dtype float32")
    gnorm = torch.nn.utils.clip_grad_norm_(run.params, cfg.max_grad_norm if cfg.max_grad_norm > 0 else math.inf)
    if not torch.isfinite(gnorm):
        raise TrainError(f"gradient norm is {gnorm.item()} at step {state.step + 1}")
    lr = run.sched.get_last_lr()[0]
    run.opt.step()
    run.sched.step()
    run.opt.zero_grad(set_to_none=True)
    return step_loss, lr, n_global


def _record_step(run: _Run, epoch: int, s: int, t0: float, step_loss: float, lr: float, n_global: int,
                 progress: Optional[Progress]) -> float:
    """Count a finished step (position, tokens, time, train curve); returns its fractional epoch."""
    state = run.state
    state.step += 1
    state.step_in_epoch = s + 1
    state.tokens_seen += n_global
    state.train_time_s += time.perf_counter() - t0
    ep = epoch + (s + 1) / len(run.plans[epoch])
    state.curve_train.append({"step": state.step, "epoch": round(ep, 4), "train_loss": step_loss,
                              "lr": lr, "tokens": state.tokens_seen,
                              "train_time_s": round(state.train_time_s, 4)})
    if progress:
        progress.update(1, f"loss {step_loss:.4f} {state.tokens_seen / state.train_time_s:.0f} tok/s")
    return ep


def _evaluate_step(run: _Run, ep: float) -> None:
    """Eval after a step: the eval curve, a new best adapter, early stopping."""
    state, stopper, dist = run.state, run.stopper, run.dist
    t1 = time.perf_counter()
    eval_loss = run.evaluate()
    state.eval_time_s += time.perf_counter() - t1
    state.curve_eval.append({"step": state.step, "epoch": round(ep, 4), "eval_loss": eval_loss})
    if stopper.update(state.step, eval_loss):
        run.best_lora = lora_state(run.model)
    if dist.main:
        log.info("step %d epoch %.2f: eval loss %.4f (best %.4f at step %d)", state.step,
                 ep, eval_loss, stopper.best_loss, stopper.best_step)
    if stopper.should_stop:
        state.stopped_early = True
        if dist.main:
            log.info("early stopping: %d evals without improvement > %g",
                     stopper.bad_evals, stopper.min_delta)


def _run_epochs(run: _Run, trace: Optional[str], time_limit_s: Optional[float]) -> None:
    """Steps from the run's data position to the end, an early stop or the time limit."""
    cfg, dist, state = run.cfg, run.dist, run.state
    steps_per_epoch = [len(p) for p in run.plans]
    what = f"train steps {state.step + 1}..{run.total_steps}" if state.step else "train steps"
    progress = Progress(log, what, run.total_steps - state.step) if dist.main else None
    trace_f = open(f"{trace}.rank{dist.rank}.jsonl", "a") if trace else None
    timed_out, warm_s = False, None
    run.model.train()
    try:
        for epoch in range(state.epoch, cfg.epochs):
            state.epoch = epoch
            for s in range(state.step_in_epoch, steps_per_epoch[epoch]):
                t0 = time.perf_counter()
                step_loss, lr, n_global = _optimizer_step(run, epoch, s, trace_f)
                ep = _record_step(run, epoch, s, t0, step_loss, lr, n_global, progress)

                if warm_s is None:  # the first step of a run warms up (allocations, oneDNN kernels)
                    warm_s = state.train_time_s
                timed_out = (time_limit_s is not None and state.train_time_s - warm_s >= time_limit_s
                             and state.step - state.resumed_from_step >= 3)
                last = state.step == run.total_steps or timed_out
                if cfg.eval_every_steps:
                    do_eval = state.step % cfg.eval_every_steps == 0 or last
                else:
                    do_eval = s + 1 == steps_per_epoch[epoch]
                if do_eval:
                    _evaluate_step(run, ep)
                if do_eval or state.stopped_early or (cfg.save_every_steps and state.step % cfg.save_every_steps == 0):
                    run.save()
                if state.stopped_early or timed_out:
                    break
            if state.stopped_early or timed_out:
                break
            state.step_in_epoch = 0
            state.epoch = epoch + 1
    finally:
        if trace_f:
            trace_f.close()


def fit(model, examples: list[Example], evaluate: Callable[[], float], cfg: TrainConfig, dist: Dist,
        pad_id: int, checkpoint: Optional[Path] = None, fingerprint: str = "",
        resume: Optional[dict] = None, trace: Optional[str] = None,
        time_limit_s: Optional[float] = None) -> FitResult:
    """Train LoRA params on ``examples``; evaluate/early-stop/checkpoint as configured.
    ``time_limit_s`` (benchmarks only): stop after that much training time past the first step."""
    params = [p for _, p in trainable(model)]
    lengths = [len(e.input_ids) for e in examples]
    plans = plan_epochs(lengths, cfg, dist.world)
    total_steps = sum(len(p) for p in plans)
    opt, sched = make_optimizer(params, cfg, dist.device, total_steps)
    run = _Run(model=model, examples=examples, lengths=lengths, plans=plans, evaluate=evaluate, cfg=cfg,
               dist=dist, pad_id=pad_id, params=params, opt=opt, sched=sched, total_steps=total_steps,
               stopper=EarlyStopper(cfg.early_stopping.patience, cfg.early_stopping.min_delta),
               checkpoint=checkpoint, fingerprint=fingerprint)
    if resume is not None:
        _resume(run, resume)
    else:
        _evaluate_base(run)

    if run.state.done:
        return FitResult(run.state, run.stopper, run.best_lora, total_steps)
    _run_epochs(run, trace, time_limit_s)
    run.state.done = True
    run.save()
    return FitResult(run.state, run.stopper, run.best_lora, total_steps)
