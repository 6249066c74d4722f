"""Length-grouped micro-batches under a token budget, grouped into optimizer steps; the prefix
every row of a micro-batch shares is cut off and run once."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Optional

import torch

from policytune.training.config import TrainError
from policytune.training.encode import IGNORE, Example


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


def eval_batches(examples: list[Example], pad_id: int, batch_tokens: int, share_prefix: bool = True,
                 device=None) -> list[Batch]:
    """Every example once, in length-sorted micro-batches under ``batch_tokens``, collated."""
    return [collate([examples[i] for i in b], pad_id, share_prefix, device)
            for b in plan_batches([len(e.input_ids) for e in examples], batch_tokens, shuffle=False)]
