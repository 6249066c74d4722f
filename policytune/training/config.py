"""The ``train`` params section (every knob with its help text), its checks and the error
the stage reports when training cannot produce a meaningful model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from policytune.core.params import NonNegFloat, NonNegInt, ParamsError, PositiveFloat, PositiveInt, Range

SCHEDULERS = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}


@dataclass
class LoraParams:
    r: PositiveInt = field(default=8, metadata={"help": "LoRA rank"})
    alpha: PositiveInt = field(default=16, metadata={"help": "LoRA alpha (scale = alpha / r)"})
    dropout: Annotated[float, Range(ge=0, lt=1)] = field(default=0.05, metadata={"help": "dropout on the LoRA input"})
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"], metadata={
        "help": "names of the Linear modules that get adapters (all-linear: every Linear)"})
    layers: NonNegInt = field(default=0, metadata={
        "help": "adapt only the top N decoder layers (0 = all): no backward pass runs below the lowest "
                "adapted layer, so training costs about forward + N/L of a backward"})


@dataclass
class EarlyStoppingParams:
    patience: NonNegInt = field(default=3, metadata={
        "help": "stop after this many evals without improvement (0: never stop early)"})
    min_delta: NonNegFloat = field(default=0.0, metadata={
        "help": "an eval loss counts as an improvement only if below best - min_delta"})


@dataclass
class TrainPaths:
    train: str = field(default="data/raft/train.jsonl", metadata={"help": "train rows (messages)"})
    val: str = field(default="data/raft/val.jsonl", metadata={"help": "val rows (messages)"})
    adapter: str = field(default="models/adapter", metadata={"help": "best adapter (PEFT folder)"})
    merged: str = field(default="models/merged", metadata={"help": "merged model (merge: true)"})
    checkpoints: str = field(default="models/checkpoints", metadata={"help": "resume state"})
    metrics: str = field(default="metrics/train.json", metadata={"help": "summary metrics"})
    curve: str = field(default="metrics/train_curve", metadata={
        "help": "folder of train.json / eval.json loss curves (DVC plots)"})


@dataclass
class TrainConfig:
    base_dir: str = field(default="models/student", metadata={"help": "base model folder"})
    lora: LoraParams = field(default_factory=LoraParams)
    learning_rate: PositiveFloat = field(default=2e-4, metadata={"help": "peak learning rate"})
    lr_scheduler: Literal["linear", "cosine", "constant"] = field(default="cosine", metadata={"help": "linear|cosine|constant (after warmup)"})
    warmup_ratio: Annotated[float, Range(ge=0, lt=1)] = field(default=0.05, metadata={"help": "warmup as a fraction of all steps"})
    warmup_steps: NonNegInt = field(default=0, metadata={"help": "warmup steps; > 0 overrides warmup_ratio"})
    weight_decay: NonNegFloat = field(default=0.0, metadata={"help": "AdamW weight decay (LoRA params)"})
    max_grad_norm: NonNegFloat = field(default=1.0, metadata={"help": "gradient clipping (0: off)"})
    batch_tokens: PositiveInt = field(default=1024, metadata={
        "help": "micro-batch size in TOKENS: rows x longest row <= this (padding included); "
                "a step has nproc x grad_accum micro-batches"})
    grad_accum: PositiveInt = field(default=1, metadata={"help": "micro-batches per rank per optimizer step"})
    epochs: PositiveInt = field(default=3, metadata={"help": "maximum epochs (early stopping may end sooner)"})
    max_length: PositiveInt = field(default=512, metadata={"help": "maximum tokens of one conversation"})
    overlong: Literal["error", "drop"] = field(default="error", metadata={
        "help": "error|drop: a row longer than max_length fails the stage, or is dropped and counted"})
    seed: int = field(default=0, metadata={"help": "seed of LoRA init, data order and dropout"})
    dtype: Literal["auto", "bfloat16", "float32", "float16"] = field(default="auto", metadata={
        "help": "auto|bfloat16|float32: base weights (auto: bf16 where it runs natively, else fp32)"})
    eval_every_steps: NonNegInt = field(default=0, metadata={"help": "eval every N steps (0: each epoch end)"})
    early_stopping: EarlyStoppingParams = field(default_factory=EarlyStoppingParams)
    save_every_steps: NonNegInt = field(default=0, metadata={
        "help": "also checkpoint every N steps (0: only after each eval)"})
    resume: bool = field(default=True, metadata={"help": "resume from a matching checkpoint"})
    merge: bool = field(default=False, metadata={"help": "also write base+adapter merged to paths.merged"})
    nproc: PositiveInt = field(default=1, metadata={
        "help": "processes (DDP via torchrun: gloo on CPU, nccl on GPU); > 1 relaunches the stage"})
    num_threads: NonNegInt = field(default=0, metadata={"help": "torch CPU threads per process (0: cores / nproc)"})
    compile: bool = field(default=False, metadata={
        "help": "torch.compile the decoder MLPs and norms (measured on a 2-core AVX2 CPU: no gain "
                "after about a minute of compiling; may help on GPUs)"})
    share_prefix: bool = field(default=True, metadata={
        "help": "run the prefix all rows of a micro-batch share once (exact; off: plain batches)"})
    paths: TrainPaths = field(default_factory=TrainPaths)


class TrainError(RuntimeError):
    """Training cannot produce a meaningful model; the message says why and what to change."""


def check_config(cfg: TrainConfig) -> None:
    if cfg.lr_scheduler not in SCHEDULERS:
        raise ParamsError(f"train.lr_scheduler must be one of {', '.join(SCHEDULERS)}, got {cfg.lr_scheduler!r}")
    if cfg.overlong not in ("error", "drop"):
        raise ParamsError(f"train.overlong must be error or drop, got {cfg.overlong!r}")
    if cfg.dtype not in ("auto", "bfloat16", "float32", "float16"):
        raise ParamsError(f"train.dtype must be auto, bfloat16 or float32, got {cfg.dtype!r}")
    for name in ("batch_tokens", "grad_accum", "epochs", "max_length", "nproc"):
        if getattr(cfg, name) < 1:
            raise ParamsError(f"train.{name} must be >= 1, got {getattr(cfg, name)}")
    for name in ("eval_every_steps", "save_every_steps", "warmup_steps", "num_threads"):
        if getattr(cfg, name) < 0:
            raise ParamsError(f"train.{name} must be >= 0, got {getattr(cfg, name)}")
    if not 0 <= cfg.warmup_ratio < 1:
        raise ParamsError(f"train.warmup_ratio must be in [0, 1), got {cfg.warmup_ratio}")
    if cfg.lora.r < 1 or not 0 <= cfg.lora.dropout < 1:
        raise ParamsError(f"train.lora: r must be >= 1 and dropout in [0, 1), got {cfg.lora}")
    if cfg.early_stopping.patience < 0 or cfg.early_stopping.min_delta < 0:
        raise ParamsError("train.early_stopping: patience and min_delta must be >= 0")
