"""train: LoRA fine-tuning of the student on the chat-format train split, early-stopped on val.

Reads   ``base_dir`` (models/student), data/augment/train.jsonl, data/split/val.jsonl
        (rows with ``messages`` = system/user/assistant, plus lineage such as ``qa_id``)
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

What is trained and how (each point is tested in tests/test_train.py):

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

import argparse
import dataclasses
import hashlib
import json
import math
import os
import random
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from policytune.lm.chat_format import FALLBACK_CHAT_TEMPLATE, template_sha
from policytune.core.params import ParamsError, load_section, to_dict
from policytune.core.progress import Progress, get_logger
from policytune.core.records import atomic_write_text, read_jsonl, sha256_file, write_json

log = get_logger("train")

IGNORE = -100
CHECKPOINT_FILE = "last.pt"
SCHEDULERS = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}


# ---------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------

@dataclass
class LoraParams:
    r: int = field(default=8, metadata={"help": "LoRA rank"})
    alpha: int = field(default=16, metadata={"help": "LoRA alpha (scale = alpha / r)"})
    dropout: float = field(default=0.05, metadata={"help": "dropout on the LoRA input"})
    target_modules: list = field(default_factory=lambda: ["q_proj", "v_proj"], metadata={
        "help": "names of the Linear modules that get adapters (all-linear: every Linear)"})


@dataclass
class EarlyStoppingParams:
    patience: int = field(default=3, metadata={
        "help": "stop after this many evals without improvement (0: never stop early)"})
    min_delta: float = field(default=0.0, metadata={
        "help": "an eval loss counts as an improvement only if below best - min_delta"})


@dataclass
class TrainPaths:
    train: str = field(default="data/augment/train.jsonl", metadata={"help": "train rows (messages)"})
    val: str = field(default="data/split/val.jsonl", metadata={"help": "val rows (messages)"})
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
    learning_rate: float = field(default=2e-4, metadata={"help": "peak learning rate"})
    lr_scheduler: str = field(default="cosine", metadata={"help": "linear|cosine|constant (after warmup)"})
    warmup_ratio: float = field(default=0.05, metadata={"help": "warmup as a fraction of all steps"})
    warmup_steps: int = field(default=0, metadata={"help": "warmup steps; > 0 overrides warmup_ratio"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay (LoRA params)"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping (0: off)"})
    batch_tokens: int = field(default=1024, metadata={
        "help": "micro-batch size in TOKENS: rows x longest row <= this (padding included); "
                "a step has nproc x grad_accum micro-batches"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per rank per optimizer step"})
    epochs: int = field(default=3, metadata={"help": "maximum epochs (early stopping may end sooner)"})
    max_length: int = field(default=512, metadata={"help": "maximum tokens of one conversation"})
    overlong: str = field(default="error", metadata={
        "help": "error|drop: a row longer than max_length fails the stage, or is dropped and counted"})
    seed: int = field(default=0, metadata={"help": "seed of LoRA init, data order and dropout"})
    dtype: str = field(default="auto", metadata={
        "help": "auto|bfloat16|float32: base weights (auto: bf16 where it runs natively, else fp32)"})
    eval_every_steps: int = field(default=0, metadata={"help": "eval every N steps (0: each epoch end)"})
    early_stopping: EarlyStoppingParams = field(default_factory=EarlyStoppingParams)
    save_every_steps: int = field(default=0, metadata={
        "help": "also checkpoint every N steps (0: only after each eval)"})
    resume: bool = field(default=True, metadata={"help": "resume from a matching checkpoint"})
    merge: bool = field(default=False, metadata={"help": "also write base+adapter merged to paths.merged"})
    nproc: int = field(default=1, metadata={
        "help": "processes (DDP via torchrun: gloo on CPU, nccl on GPU); > 1 relaunches the stage"})
    num_threads: int = field(default=0, metadata={"help": "torch CPU threads per process (0: cores / nproc)"})
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


# ---------------------------------------------------------------------------------------------
# tokenization: assistant-only labels
# ---------------------------------------------------------------------------------------------

@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]          # the token id where the token carries loss, IGNORE elsewhere
    row: int                   # index of the row in its file
    n_labels: int = 0          # tokens that carry loss (never the first token)
    prompt_len: int = 0        # tokens before the first labelled one

    def __post_init__(self):
        self.n_labels = sum(1 for t in self.labels[1:] if t != IGNORE)
        self.prompt_len = next((i for i, t in enumerate(self.labels) if t != IGNORE), len(self.labels))


def _render(tokenizer, messages: list[dict], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def _tokens(tokenizer, text: str) -> list[int]:
    # The chat template writes every special token itself (apply_chat_template does the same).
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


def _check_messages(messages) -> None:
    if not isinstance(messages, list) or not messages:
        raise TrainError("'messages' must be a non-empty list of {role, content}")
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or \
                m.get("role") not in ("system", "user", "assistant"):
            raise TrainError(f"bad message {m!r}: need role system|user|assistant and string content")
    if not any(m["role"] == "assistant" for m in messages):
        raise TrainError("conversation has no assistant message to learn")


def encode_conversation(tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one conversation; labels are IGNORE except on assistant tokens.

    For assistant turn i the template renders messages[:i] + generation prompt (what inference
    feeds) and messages[:i+1]; the text between them, minus trailing whitespace, is the turn:
    its content plus the end-of-turn marker the model must learn to emit.

    Tokens: the prompt is tokenized on its own (= the ids inference feeds); the answer's ids
    are those that tokenizing prompt + answer gives after the prompt's ids (the answer's
    natural tokenization in context, e.g. no SentencePiece word-start mark after a newline).
    Where the tokenizer merges across the border, the answer is tokenized on its own instead.
    Tokens after the last assistant turn carry no loss and are dropped.
    """
    _check_messages(messages)
    ids: list[int] = []
    labels: list[int] = []
    done = ""  # rendered text already turned into ids
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        prompt = _render(tokenizer, messages[:i], True)
        turn = _render(tokenizer, messages[: i + 1], False)
        if not prompt.startswith(done) or not turn.startswith(prompt):
            raise TrainError(
                "the chat template is not prefix-consistent (rendering a conversation up to an "
                "assistant turn with the generation prompt is not a prefix of the rendering "
                "with the turn), so assistant tokens cannot be located; use a template that "
                "renders earlier turns unchanged")
        answer = turn[len(prompt):].rstrip()
        if not answer:
            raise TrainError(f"assistant turn {i} renders to no text; nothing to learn")
        prompt_ids = _tokens(tokenizer, prompt)
        if prompt_ids[:len(ids)] != ids:  # later text re-tokenized earlier turns: keep them
            prompt_ids = ids + _tokens(tokenizer, prompt[len(done):])
        whole = _tokens(tokenizer, prompt + answer)
        if len(whole) > len(prompt_ids) and whole[:len(prompt_ids)] == prompt_ids:
            answer_ids = whole[len(prompt_ids):]
        else:
            answer_ids = _tokens(tokenizer, answer)
        labels += [IGNORE] * (len(prompt_ids) - len(ids)) + answer_ids
        ids = prompt_ids + answer_ids
        done = prompt + answer
    if not ids or labels[0] != IGNORE:
        raise TrainError("conversation renders no prompt before the first assistant turn")
    return ids, labels


def encode_rows(tokenizer, rows: list[dict], max_length: int, overlong: str, what: str
                ) -> tuple[list[Example], dict]:
    """Examples of ``rows``; a row over ``max_length`` is an error (or dropped and counted)."""
    examples, dropped = [], {"prompt_too_long": 0, "answer_too_long": 0}
    for i, row in enumerate(rows):
        where = f"{what} row {i + 1}" + (f" (qa_id {row['qa_id']})" if row.get("qa_id") else "")
        if "messages" not in row:
            raise TrainError(f"{where}: no 'messages' field (chat-format rows come from split/augment)")
        try:
            ex = Example(*encode_conversation(tokenizer, row["messages"]), row=i)
        except TrainError as e:
            raise TrainError(f"{where}: {e}") from None
        if len(ex.input_ids) > max_length:
            kind = "prompt_too_long" if ex.prompt_len >= max_length else "answer_too_long"
            if overlong == "error":
                detail = (f"its prompt alone is {ex.prompt_len} tokens" if kind == "prompt_too_long"
                          else f"the answer would be cut (prompt {ex.prompt_len} tokens)")
                raise TrainError(
                    f"{where}: {len(ex.input_ids)} tokens > train.max_length {max_length}; {detail}. "
                    "Raise train.max_length, or set train.overlong: drop to skip and count such rows")
            dropped[kind] += 1
            continue
        if ex.n_labels == 0:
            raise TrainError(f"{where}: empty label mask (no assistant token carries loss)")
        examples.append(ex)
    n_drop = sum(dropped.values())
    if n_drop:
        log.warning("%s: dropped %d of %d rows longer than max_length %d (%s)", what, n_drop,
                    len(rows), max_length, ", ".join(f"{k} {v}" for k, v in dropped.items() if v))
    return examples, {"rows": len(rows), "kept": len(examples), "dropped_overlong": n_drop, **dropped}


# ---------------------------------------------------------------------------------------------
# batching: length-grouped micro-batches under a token budget, shared prefix run once
# ---------------------------------------------------------------------------------------------

def plan_batches(lengths: list[int], batch_tokens: int, seed: int = 0, epoch: int = 0,
                 shuffle: bool = True) -> list[list[int]]:
    """Micro-batches (lists of example indices) with rows x longest row <= batch_tokens.

    Shuffled (a pure function of seed and epoch), then sorted by length inside windows of
    about 16 batches and cut greedily, so rows of similar length share a batch (padding about
    3% on policy QA) while batches still differ from epoch to epoch; the batch order is
    shuffled again. ``shuffle=False``: globally sorted (eval)."""
    n = len(lengths)
    order = list(range(n))
    rng = random.Random(seed * 1_000_003 + epoch)
    if shuffle:
        rng.shuffle(order)
    mean = max(1, sum(lengths) // max(1, n))
    window = n if not shuffle else max(1, 16 * max(1, batch_tokens // mean))
    batches: list[list[int]] = []
    for w in range(0, n, window):
        chunk = sorted(order[w:w + window], key=lambda i: -lengths[i])
        cur: list[int] = []
        for i in chunk:  # descending length: the first row of a batch is its longest
            if cur and (len(cur) + 1) * lengths[cur[0]] > batch_tokens:
                batches.append(cur)
                cur = []
            cur.append(i)
        if cur:
            batches.append(cur)
    if shuffle:
        rng.shuffle(batches)
    return batches


def group_steps(batches: list[list[int]], per_step: int) -> list[list[list[int]]]:
    """Optimizer steps: consecutive groups of ``per_step`` (= nproc x grad_accum) micro-batches."""
    return [batches[i:i + per_step] for i in range(0, len(batches), per_step)]


@dataclass
class Batch:
    prefix: Optional[torch.Tensor]   # [1, p] token ids every row shares, run once (None: p = 0)
    input_ids: torch.Tensor          # [B, S] the rest of each row, right-padded
    attention_mask: Optional[torch.Tensor]  # [B, p + S] (None: no padding at all)
    target_index: torch.Tensor       # flat positions in B*S whose hidden state predicts a label
    targets: torch.Tensor            # [n_labels] the token ids to predict there
    rows: list[int]
    n_labels: int
    n_tokens: int                    # tokens actually run (prefix once)


def shared_prefix_len(examples: list[Example]) -> int:
    """Longest prefix of model inputs shared by every row, ending before any labelled target
    and leaving at least one input token per row."""
    if len(examples) < 2:
        return 0
    limit = min(min(len(e.input_ids) - 2, e.prompt_len - 1) for e in examples)
    first = examples[0].input_ids
    p = 0
    while p < limit and all(e.input_ids[p] == first[p] for e in examples):
        p += 1
    return max(p, 0)


def collate(examples: list[Example], pad_id: int, share_prefix: bool = True, device=None) -> Batch:
    """Model inputs are ids[:-1], targets ids[1:]; the shared prefix is cut off and run once."""
    p = shared_prefix_len(examples) if share_prefix else 0
    inputs = [e.input_ids[p:-1] for e in examples]
    targets = [e.labels[p + 1:] for e in examples]
    B, S = len(examples), max(len(x) for x in inputs)
    ids = torch.full((B, S), pad_id, dtype=torch.long)
    tgt = torch.full((B, S), IGNORE, dtype=torch.long)
    mask = torch.zeros((B, p + S), dtype=torch.long)
    mask[:, :p] = 1
    for b, (x, t) in enumerate(zip(inputs, targets)):
        ids[b, :len(x)] = torch.tensor(x)
        tgt[b, :len(t)] = torch.tensor(t)
        mask[b, p:p + len(x)] = 1
    flat = tgt.view(-1)
    index = (flat != IGNORE).nonzero().squeeze(1)
    if index.numel() == 0:
        raise TrainError(f"empty label mask in a micro-batch (rows {[e.row for e in examples]}): "
                         "no assistant token carries loss")
    padded = bool((mask == 0).any())
    to = (lambda t: t.to(device)) if device is not None else (lambda t: t)
    return Batch(prefix=to(torch.tensor([examples[0].input_ids[:p]])) if p else None,
                 input_ids=to(ids), attention_mask=to(mask) if padded else None,
                 target_index=to(index), targets=to(flat[index]), rows=[e.row for e in examples],
                 n_labels=int(index.numel()), n_tokens=p + sum(len(x) for x in inputs))


# ---------------------------------------------------------------------------------------------
# model: load, LoRA, loss at labelled positions only
# ---------------------------------------------------------------------------------------------

def load_tokenizer(base_dir: str):
    try:
        from policytune.lm.loading import load_tokenizer as _load
        tok = _load(base_dir, padding_side="right")
    except ImportError:  # pragma: no cover - policytune.lm.loading ships with the repo
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(base_dir, local_files_only=True)
        tok.pad_token = tok.pad_token or tok.unk_token or tok.eos_token
    if not tok.chat_template:
        log.info("%s ships no chat template; training with policytune.lm.chat_format.FALLBACK_CHAT_TEMPLATE", base_dir)
        tok.chat_template = FALLBACK_CHAT_TEMPLATE
    return tok


def load_base_model(base_dir: str, dtype: str, device: torch.device):
    from policytune.lm.loading import load_causal_lm
    model = load_causal_lm(base_dir, dtype=dtype, device=str(device))
    model.config.use_cache = False
    return model


def add_lora(model, lp: LoraParams, seed: int):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)  # LoRA A init
    targets = "all-linear" if lp.target_modules in (["all-linear"], "all-linear") else list(lp.target_modules)
    peft_model = get_peft_model(model, LoraConfig(
        r=lp.r, lora_alpha=lp.alpha, lora_dropout=lp.dropout, target_modules=targets,
        bias="none", task_type="CAUSAL_LM"))
    peft_model.train()
    return peft_model


def compile_layers(model) -> None:
    """torch.compile each decoder layer's MLP and norms (fuses their elementwise ops).
    Whole layers are not compiled: the key/value cache they update makes dynamo recompile per
    layer until its limit, after which it silently runs eager (measured: no gain)."""
    for layer in _causal_lm(model).get_decoder().layers:
        for name in ("mlp", "input_layernorm", "post_attention_layernorm"):
            if hasattr(layer, name):
                getattr(layer, name).compile(dynamic=True)


def trainable(model) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def lora_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().to("cpu", copy=True) for n, p in trainable(model)}


def load_lora_state(model, state: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for n, p in trainable(model):
            p.copy_(state[n])


def _causal_lm(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


class SumCrossEntropy(torch.autograd.Function):
    """sum_i -log softmax(z_i)[t_i] for fp32 logits z [n, vocab]; the same values and grads as
    F.cross_entropy(reduction="sum") with fewer passes over the big [n, vocab] tensor: the
    backward turns the saved log-softmax into softmax - onehot in place, instead of building
    a dense NLL gradient and running log_softmax_backward (~4% of a SmolLM2 step)."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(logits, dim=-1)
        ctx.save_for_backward(logp, targets)
        return -logp.gather(1, targets[:, None]).sum()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        logp, targets = ctx.saved_tensors
        g = logp.exp_().mul_(grad)  # softmax x grad, in the saved buffer (not needed again)
        g[torch.arange(len(targets), device=g.device), targets] -= grad
        return g, None


def batch_loss(model, batch: Batch) -> torch.Tensor:
    """Sum of cross-entropy over the batch's labelled tokens (float32 scalar).

    Runs the decoder (shared prefix once, its key/value cache repeated for every row), then
    the output head only on the hidden states that predict a label."""
    lm = _causal_lm(model)
    decoder, head = lm.get_decoder(), lm.get_output_embeddings()
    cache = None
    if batch.prefix is not None:
        cache = decoder(input_ids=batch.prefix, use_cache=True).past_key_values
        cache.batch_repeat_interleave(batch.input_ids.shape[0])
    hidden = decoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                     past_key_values=cache, use_cache=cache is not None).last_hidden_state
    hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, batch.target_index)
    logits = head(hidden).float()
    cfg = lm.config
    if getattr(cfg, "logits_scaling", None):       # Granite
        logits = logits / cfg.logits_scaling
    if getattr(cfg, "final_logit_softcapping", None):  # Gemma 2/3
        cap = cfg.final_logit_softcapping
        logits = torch.tanh(logits / cap) * cap
    return SumCrossEntropy.apply(logits, batch.targets)


# ---------------------------------------------------------------------------------------------
# distributed
# ---------------------------------------------------------------------------------------------

@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_reduce_(self, t: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            torch.distributed.all_reduce(t)
        return t

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def broadcast(self, obj):
        if self.world == 1:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]


def init_dist() -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return Dist(device=dev)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        dev, backend = torch.device("cuda", local), "nccl"
    else:
        dev, backend = torch.device("cpu"), "gloo"
    torch.distributed.init_process_group(backend=backend)
    return Dist(rank=rank, world=world, local_rank=local, device=dev)


def relaunch_under_torchrun(nproc: int, argv: list[str]) -> int:
    """Run this stage again as ``nproc`` torchrun workers on this node; returns their exit code."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
           f"--nproc_per_node={nproc}", "-m", "stages.train", *argv]
    log.info("train.nproc=%d: relaunching under torchrun: %s", nproc, " ".join(cmd[1:]))
    return subprocess.call(cmd)


def allreduce_grads(params: list[torch.nn.Parameter], extra: torch.Tensor, dist: Dist) -> torch.Tensor:
    """Sum the LoRA grads (and ``extra``) over ranks in one all-reduce; returns summed extra."""
    if dist.world == 1:
        return extra
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1).float() for g in grads] + [extra.reshape(-1).float().to(grads[0].device)])
    dist.all_reduce_(flat)
    off = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[off:off + n].view_as(g).to(g.dtype)
        off += n
    return flat[off:]


# ---------------------------------------------------------------------------------------------
# early stopping, checkpoints
# ---------------------------------------------------------------------------------------------

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


def save_checkpoint(path: Path, payload: dict) -> None:
    """torch.save to a temp file in the same folder, fsync, rename: never a torn checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        torch.save(payload, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path, fingerprint: str) -> Optional[dict]:
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a file from an incompatible version: start over, say so
        log.warning("ignoring unreadable checkpoint %s (%s)", path, e)
        return None
    if payload.get("fingerprint") != fingerprint:
        log.info("checkpoint %s is from other data/params/base model; starting from scratch", path)
        return None
    return payload


def base_identity(base_dir: str) -> str:
    """sha256 naming the base model: its prepare_models manifest, else its config + weights."""
    d = Path(base_dir)
    manifest = d / "policytune_model.json"
    if manifest.is_file():
        return sha256_file(manifest)
    h = hashlib.sha256()
    for p in sorted(d.glob("*")):
        if p.suffix in (".json", ".safetensors", ".bin", ".jinja") and p.is_file():
            h.update(p.name.encode() + sha256_file(p).encode())
    return h.hexdigest()


def run_fingerprint(cfg: TrainConfig, data_sha: dict, base_sha: str, world: int) -> str:
    """What a checkpoint must match to be resumed from: params that change the trajectory,
    the data, the base model and the step composition (nproc x grad_accum)."""
    params = to_dict(cfg)
    for k in ("save_every_steps", "resume", "merge", "nproc", "num_threads", "compile", "paths", "base_dir"):
        params.pop(k)
    blob = json.dumps({"params": params, "data": data_sha, "base": base_sha,
                       "per_step": cfg.grad_accum * world}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------------

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


def fit(model, examples: list[Example], evaluate: Callable[[], float], cfg: TrainConfig, dist: Dist,
        pad_id: int, checkpoint: Optional[Path] = None, fingerprint: str = "",
        resume: Optional[dict] = None, trace: Optional[str] = None,
        time_limit_s: Optional[float] = None) -> FitResult:
    """Train LoRA params on ``examples``; evaluate/early-stop/checkpoint as configured.
    ``time_limit_s`` (benchmarks only): stop after that much training time past the first step."""
    params = [p for _, p in trainable(model)]
    lengths = [len(e.input_ids) for e in examples]
    per_step = cfg.grad_accum * dist.world
    plans = [group_steps(plan_batches(lengths, cfg.batch_tokens, cfg.seed, e), per_step)
             for e in range(cfg.epochs)]
    total_steps = sum(len(p) for p in plans)
    warmup = cfg.warmup_steps or int(round(cfg.warmup_ratio * total_steps))

    from transformers import get_scheduler
    fused = dist.device.type in ("cpu", "cuda")
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, fused=fused)
    sched = get_scheduler(SCHEDULERS[cfg.lr_scheduler], opt, num_warmup_steps=warmup,
                          num_training_steps=total_steps)
    stopper = EarlyStopper(cfg.early_stopping.patience, cfg.early_stopping.min_delta)

    if resume is not None:
        load_lora_state(model, resume["lora"])
        opt.load_state_dict(resume["optimizer"])
        sched.load_state_dict(resume["scheduler"])
        stopper = EarlyStopper(**resume["stopper"])
        state = TrainState(**resume["state"])
        best_lora = resume["best_lora"]
        state.resumed_from_step = state.step
        if dist.main:
            log.info("resumed from step %d/%d (epoch %d, best eval loss %.4f at step %d)", state.step,
                     total_steps, state.epoch + 1, stopper.best_loss, stopper.best_step)
    else:
        state, best_lora = TrainState(), {}
        t0 = time.perf_counter()
        state.base_eval_loss = evaluate()
        state.eval_time_s += time.perf_counter() - t0
        state.curve_eval.append({"step": 0, "epoch": 0.0, "eval_loss": state.base_eval_loss})
        if dist.main:
            log.info("base model eval loss %.4f (before training)", state.base_eval_loss)

    def save() -> None:
        if checkpoint is None:
            return
        if dist.main:
            save_checkpoint(checkpoint, {
                "version": 1, "fingerprint": fingerprint, "state": dataclasses.asdict(state),
                "stopper": dataclasses.asdict(stopper), "lora": lora_state(model),
                "best_lora": best_lora, "optimizer": opt.state_dict(), "scheduler": sched.state_dict()})
        dist.barrier()

    if state.done:
        return FitResult(state, stopper, best_lora, total_steps)

    steps_per_epoch = [len(p) for p in plans]
    what = f"train steps {state.step + 1}..{total_steps}" if state.step else "train steps"
    progress = Progress(log, what, total_steps - state.step) if dist.main else None
    trace_f = open(f"{trace}.rank{dist.rank}.jsonl", "a") if trace else None
    timed_out, warm_s = False, None
    model.train()
    try:
        for epoch in range(state.epoch, cfg.epochs):
            state.epoch = epoch
            for s in range(state.step_in_epoch, steps_per_epoch[epoch]):
                t0 = time.perf_counter()
                step_mbs = plans[epoch][s]
                mine = step_mbs[dist.rank::dist.world]
                n_global = sum(examples[i].n_labels for mb in step_mbs for i in mb)
                torch.manual_seed(step_seed(cfg.seed, dist.rank, state.step))
                loss_sum = torch.zeros((), dtype=torch.float32, device=dist.device)
                for mb in mine:
                    batch = collate([examples[i] for i in mb], pad_id, cfg.share_prefix, dist.device)
                    loss = batch_loss(model, batch)
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
                step_loss = allreduce_grads(params, loss_sum, dist).item() / n_global
                if not math.isfinite(step_loss):
                    raise TrainError(
                        f"train loss is {step_loss} at step {state.step + 1} (epoch {epoch + 1}); "
                        "lower train.learning_rate, or use dtype float32")
                gnorm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm if cfg.max_grad_norm > 0 else math.inf)
                if not torch.isfinite(gnorm):
                    raise TrainError(f"gradient norm is {gnorm.item()} at step {state.step + 1}")
                lr = sched.get_last_lr()[0]
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                state.step += 1
                state.step_in_epoch = s + 1
                state.tokens_seen += n_global
                state.train_time_s += time.perf_counter() - t0
                ep = epoch + (s + 1) / steps_per_epoch[epoch]
                state.curve_train.append({"step": state.step, "epoch": round(ep, 4), "train_loss": step_loss,
                                          "lr": lr, "tokens": state.tokens_seen,
                                          "train_time_s": round(state.train_time_s, 4)})
                if progress:
                    progress.update(1, f"loss {step_loss:.4f} {state.tokens_seen / state.train_time_s:.0f} tok/s")

                if warm_s is None:  # the first step of a run warms up (allocations, oneDNN kernels)
                    warm_s = state.train_time_s
                timed_out = (time_limit_s is not None and state.train_time_s - warm_s >= time_limit_s
                             and state.step - state.resumed_from_step >= 3)
                last = state.step == total_steps or timed_out
                if cfg.eval_every_steps:
                    do_eval = state.step % cfg.eval_every_steps == 0 or last
                else:
                    do_eval = s + 1 == steps_per_epoch[epoch]
                if do_eval:
                    t1 = time.perf_counter()
                    eval_loss = evaluate()
                    state.eval_time_s += time.perf_counter() - t1
                    state.curve_eval.append({"step": state.step, "epoch": round(ep, 4), "eval_loss": eval_loss})
                    if stopper.update(state.step, eval_loss):
                        best_lora = lora_state(model)
                    if dist.main:
                        log.info("step %d epoch %.2f: eval loss %.4f (best %.4f at step %d)", state.step,
                                 ep, eval_loss, stopper.best_loss, stopper.best_step)
                    if stopper.should_stop:
                        state.stopped_early = True
                        if dist.main:
                            log.info("early stopping: %d evals without improvement > %g",
                                     stopper.bad_evals, stopper.min_delta)
                if do_eval or state.stopped_early or (cfg.save_every_steps and state.step % cfg.save_every_steps == 0):
                    save()
                if state.stopped_early or timed_out:
                    break
            if state.stopped_early or timed_out:
                break
            state.step_in_epoch = 0
            state.epoch = epoch + 1
    finally:
        if trace_f:
            trace_f.close()
    state.done = True
    save()
    return FitResult(state, stopper, best_lora, total_steps)


# ---------------------------------------------------------------------------------------------
# outputs
# ---------------------------------------------------------------------------------------------

def _replace_dir(build: Path, out: Path) -> None:
    """Put a finished folder in place; the old one goes only once the new one is complete."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
    build.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


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
    write_json(build / "policytune_train.json", info)
    atomic_write_text(build / "README.md", model_card(info))
    _replace_dir(build, out_dir)


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
    _replace_dir(build, out_dir)


def write_curves(folder: Path, state: TrainState) -> None:
    write_json(folder / "train.json", state.curve_train)
    write_json(folder / "eval.json", state.curve_eval)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params", default=None, help="params.yaml path (default: ./params.yaml)")
    args = ap.parse_args(argv)
    wall0 = time.perf_counter()
    cfg = load_section(TrainConfig, "train", args.params)
    check_config(cfg)
    if cfg.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return relaunch_under_torchrun(cfg.nproc, argv)

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


def _train(cfg: TrainConfig, dist: Dist, wall0: float) -> int:
    p = cfg.paths
    for what, path in (("train", p.train), ("val", p.val)):
        if not Path(path).is_file():
            raise TrainError(f"{path} not found; run the {'augment' if what == 'train' else 'split'} stage first")
    train_rows, val_rows = read_jsonl(p.train), read_jsonl(p.val)
    if not train_rows:
        raise TrainError(f"empty train set: {p.train} has no rows")
    if not val_rows:
        raise TrainError(f"empty val set: {p.val} has no rows (early stopping needs a val set)")

    tokenizer = load_tokenizer(cfg.base_dir)
    train_ex, train_stats = encode_rows(tokenizer, train_rows, cfg.max_length, cfg.overlong, "train")
    val_ex, val_stats = encode_rows(tokenizer, val_rows, cfg.max_length, cfg.overlong, "val")
    if not train_ex:
        raise TrainError(f"empty train set: all {len(train_rows)} rows of {p.train} were dropped")
    if not val_ex:
        raise TrainError(f"empty val set: all {len(val_rows)} rows of {p.val} were dropped")

    model = load_base_model(cfg.base_dir, cfg.dtype, dist.device)
    disk_cfg = json.loads((Path(cfg.base_dir) / "config.json").read_text())
    on_disk = str(disk_cfg.get("dtype") or disk_cfg.get("torch_dtype") or "float32")
    weight_dtype = next(model.parameters()).dtype
    model = add_lora(model, cfg.lora, cfg.seed)
    if cfg.compile:
        compile_layers(model)
    n_base = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)
    n_lora = sum(p.numel() for _, p in trainable(model))
    if dist.main:
        log.info("base %s: %.1fM params, %s on %s x%d (%d threads); LoRA r=%d on %s: %.2fM params",
                 cfg.base_dir, n_base / 1e6, weight_dtype, dist.device, dist.world, torch.get_num_threads(),
                 cfg.lora.r, ",".join(cfg.lora.target_modules), n_lora / 1e6)
        log.info("train %d rows (%d assistant tokens), val %d rows", len(train_ex),
                 sum(e.n_labels for e in train_ex), len(val_ex))

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    val_batches = [collate([val_ex[i] for i in b], pad_id, cfg.share_prefix, dist.device)
                   for b in plan_batches([len(e.input_ids) for e in val_ex], 2 * cfg.batch_tokens, shuffle=False)]
    evaluate = make_evaluator(model, val_batches, dist)

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
    state, stopper = result.state, result.stopper

    rss = torch.tensor([peak_rss_mb()], dtype=torch.float64, device=dist.device)
    if dist.world > 1:
        torch.distributed.all_reduce(rss, op=torch.distributed.ReduceOp.MAX)
    if not dist.main:
        return 0
    steps_per_epoch = max(1, result.total_steps // cfg.epochs)
    info = {
        "base_dir": cfg.base_dir, "base_model": _base_manifest(cfg.base_dir),
        "chat_template_sha": template_sha(tokenizer), "data": data, "params": to_dict(cfg),
        "best_step": stopper.best_step, "best_eval_loss": stopper.best_loss,
        "base_eval_loss": state.base_eval_loss, "steps": state.step,
        "epochs_run": round(state.curve_train[-1]["epoch"], 3) if state.curve_train else 0.0,
        "stopped_early": state.stopped_early,
    }
    export_adapter(model, tokenizer, result.best_lora, Path(p.adapter), info)
    export_merged(model, tokenizer, Path(p.merged), cfg.merge, on_disk)
    write_curves(Path(p.curve), state)
    metrics = {
        "best_step": stopper.best_step, "best_eval_loss": stopper.best_loss,
        "base_eval_loss": state.base_eval_loss,
        "eval_loss_improvement": state.base_eval_loss - stopper.best_loss,
        "epochs_run": info["epochs_run"], "steps": state.step, "total_steps": result.total_steps,
        "steps_per_epoch": steps_per_epoch, "stopped_early": state.stopped_early,
        "tokens_seen": state.tokens_seen, "tokens_run": state.tokens_run,
        "padding_and_prefix_saving": round(1 - state.tokens_run / max(1, state.tokens_padded), 4),
        "useful_tokens_per_s": round(state.tokens_seen / max(state.train_time_s, 1e-9), 2),
        "train_time_s": round(state.train_time_s, 2), "eval_time_s": round(state.eval_time_s, 2),
        "wall_s": round(time.perf_counter() - wall0, 2), "peak_rss_mb": round(rss.item(), 1),
        "resumed_from_step": state.resumed_from_step, "world_size": dist.world,
        "dtype": str(weight_dtype).removeprefix("torch."), "threads": torch.get_num_threads(),
        "base_params": n_base, "lora_params": n_lora,
        "train_rows": train_stats, "val_rows": val_stats,
        "chat_template_sha": info["chat_template_sha"],
    }
    write_json(p.metrics, metrics)
    log.info("best eval loss %.4f at step %d (base %.4f); %d steps, %.0f useful tok/s, wall %.0fs; "
             "adapter -> %s", stopper.best_loss, stopper.best_step, state.base_eval_loss, state.step,
             metrics["useful_tokens_per_s"], metrics["wall_s"], p.adapter)
    return 0


def _base_manifest(base_dir: str) -> dict:
    m = Path(base_dir) / "policytune_model.json"
    if m.is_file():
        info = json.loads(m.read_text())
        src = info.get("source", {})
        return {"spec": info.get("spec"), "upstream": src.get("upstream") or src.get("hub_id"),
                "sha256": src.get("sha256"), "n_params": info.get("n_params"), "dtype": info.get("dtype")}
    return {"spec": base_dir, "upstream": None, "sha256": base_identity(base_dir)}


if __name__ == "__main__":
    sys.exit(main())
