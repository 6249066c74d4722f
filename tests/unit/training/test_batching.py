"""Micro-batches: length-grouped under the token budget, every row once per epoch, deterministic;
the shared prefix never covers a label; an empty label mask is an error."""

from __future__ import annotations

import pytest

from policytune.training.batching import collate, eval_batches, plan_batches, shared_prefix_len
from policytune.training.config import TrainError
from policytune.training.encode import IGNORE, Example


def test_empty_label_mask_in_a_batch_is_an_error(examples):
    broken = Example(list(examples[0].input_ids), [IGNORE] * len(examples[0].labels), row=99)
    with pytest.raises(TrainError, match="empty label mask"):
        collate([broken], pad_id=0)


def test_plan_batches_length_grouped_budget_and_coverage():
    import random
    lengths = [random.Random(i).randint(20, 120) for i in range(300)]
    for epoch in range(3):
        batches = plan_batches(lengths, 1024, seed=7, epoch=epoch)
        flat = sorted(i for b in batches for i in b)
        assert flat == list(range(300))  # every row exactly once per epoch
        for b in batches:
            assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 1024
        padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
        assert padded / sum(lengths) < 1.1  # length grouping: < 10% padding
        assert batches == plan_batches(lengths, 1024, seed=7, epoch=epoch)  # deterministic
    assert plan_batches(lengths, 1024, seed=7, epoch=0) != plan_batches(lengths, 1024, seed=7, epoch=1)


def test_shared_prefix_never_covers_a_label(examples):
    p = shared_prefix_len(examples)
    assert p > 10  # the system prompt and the user header are shared
    assert all(p < e.prompt_len for e in examples)
    batch = collate(examples, pad_id=0)
    assert batch.n_tokens < sum(len(e.input_ids) - 1 for e in examples)


def test_eval_batches_cover_every_example_once_in_sorted_batches(examples):
    batches = eval_batches(examples, 0, 256)
    plan = plan_batches([len(e.input_ids) for e in examples], 256, shuffle=False)
    assert [b.rows for b in batches] == [[examples[i].row for i in b] for b in plan]
    assert sorted(r for b in batches for r in b.rows) == sorted(e.row for e in examples)
    assert sum(b.n_labels for b in batches) == sum(e.n_labels for e in examples)
