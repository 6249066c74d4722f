"""Base model + LoRA adapter folders as the evaluate stage and the chatbot load them: the
tokenizer with its chat template (the train stage's fallback for template-less models), the
adapter's train record checked against that template, and the fine-tuned model (merged or not).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from policytune.core.progress import get_logger
from policytune.core.records import read_json
from policytune.lm.chat_format import FALLBACK_CHAT_TEMPLATE, template_sha
from policytune.lm.loading import load_causal_lm, load_tokenizer

TRAIN_INFO = "policytune_train.json"  # written into the adapter folder by the train stage

log = get_logger("evaluate")


class AdapterError(RuntimeError):
    """An adapter folder that cannot be used (missing, trained under another chat template)."""


def load_lm(path: str | Path, dtype: str = "auto", device: Optional[str] = None):
    return load_causal_lm(path, dtype=dtype, device=device)


def load_tok(path: str | Path):
    tok = load_tokenizer(path, padding_side="left")
    if not getattr(tok, "chat_template", None):
        tok.chat_template = FALLBACK_CHAT_TEMPLATE  # as the train stage does for template-less models
    return tok


def check_adapter(adapter_dir: str | Path, tokenizer) -> dict:
    """The adapter's train record; stops if it was trained under another chat template."""
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise AdapterError(f"{adapter_dir} holds no adapter_config.json; run the train stage "
                            "(`dvc repro train`) first")
    info_path = adapter_dir / TRAIN_INFO
    info = read_json(info_path) if info_path.is_file() else {}
    want = info.get("chat_template_sha")
    have = template_sha(tokenizer)
    if want and want != have:
        raise AdapterError(
            f"chat template mismatch: the adapter in {adapter_dir} was trained with template sha {want}, "
            f"but the base tokenizer renders with {have}. Prompts would not look like training prompts; "
            "retrain (`dvc repro train`) or evaluate with the tokenizer the adapter was trained with.")
    if not want:
        log.warning("%s has no %s chat_template_sha; cannot verify the chat template", adapter_dir, TRAIN_INFO)
    return info


def load_finetuned(base_dir: str | Path, adapter_dir: str | Path, dtype: str = "auto",
                   device: Optional[str] = None, merge: bool = True):
    from peft import PeftModel

    base = load_lm(base_dir, dtype=dtype, device=device)
    model = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=False)
    if merge:
        model = model.merge_and_unload()
    return model.eval()
