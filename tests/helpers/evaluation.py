"""Shared set-up of the evaluate tests (tests/unit/evaluation/test_evaluate.py,
tests/unit/lm/test_adapters.py, tests/stages/test_evaluate.py): test rows with their source
chunks, and a random-init LoRA adapter on the tiny model (``init_lora_weights=False``: random B
as well as A, so base and fine-tuned really differ) with the train stage's record.
"""

from __future__ import annotations

import json
from pathlib import Path

from policytune.lm.adapters import TRAIN_INFO, load_tok
from policytune.lm.chat_format import template_sha

ROWS = [
    {"qa_id": "q1", "question": "How many days do I have to submit an expense claim?",
     "answer": "Expense claims must be submitted within 30 days of the purchase.", "chunk_id": "c1"},
    {"qa_id": "q2", "question": "Who approves annual leave?",
     "answer": "Your line manager approves annual leave requests.", "chunk_id": "c2"},
    {"qa_id": "q3", "question": "Is remote work allowed?",
     "answer": "Yes, up to three days per week with manager agreement.", "chunk_id": "c3"},
    {"qa_id": "q4", "question": "What must happen before a high-risk AI system is deployed?",
     "answer": "It must pass a conformity assessment.", "chunk_id": "c4"},
    {"qa_id": "q5", "question": "Budget?", "answer": "The travel budget is set each January.", "chunk_id": None},
]
CHUNKS = [
    {"chunk_id": "c1", "text": "Expense claims must be submitted within 30 days of the purchase date."},
    {"chunk_id": "c2", "text": "Annual leave requests are approved by the employee's line manager."},
    {"chunk_id": "c3", "text": "Remote work is allowed for up to three days per week."},
    {"chunk_id": "c4", "text": "High-risk AI systems undergo a conformity assessment before deployment."},
]


def make_adapter(tiny_dir: Path, out: Path) -> Path:
    """A random LoRA (q/v, r=4, seed 0) on the tiny model in ``out``, with policytune_train.json."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_dir)
    # init_lora_weights=False: random B as well as A, so the fine-tuned model really differs
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                            init_lora_weights=False))
    model.save_pretrained(out)
    tok = load_tok(tiny_dir)
    (out / TRAIN_INFO).write_text(json.dumps({"chat_template_sha": template_sha(tok)}))
    return out
