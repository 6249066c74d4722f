"""GGUF file -> plain Hugging Face folder (safetensors, tokenizer with a chat template and a pad
token, generation config): the conversion behind ``stages/prepare_models.py`` for causal LMs
(:mod:`policytune.lm.prepare`).
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from policytune.core.progress import get_logger
from policytune.lm import chat_format as chat
from policytune.lm import loading
from policytune.lm.generation import collect_stop_ids, template_marker_id

log = get_logger("prepare_models")


class _ListWithSetLookup(list):
    """A list whose ``in`` is a set lookup (same answers, O(1))."""

    def __init__(self, items):
        super().__init__(items)
        self._set = set(self)

    def __contains__(self, item):
        return item in self._set


@contextlib.contextmanager
def gguf_loading():
    """Make transformers' GGUF loading quiet and fast, for the duration of one conversion.

    - quiet: no tqdm bars or advisory warnings (DVC logs keep our own progress lines; the
      GGUF tensor loop calls tqdm directly, so it is swapped for a pass-through);
    - one GGUFReader per file: transformers parses the GGUF header (every vocabulary entry)
      four times per model+tokenizer load; the reader is read-only, so it is reused;
    - merges: for a GGUF tokenizer without BPE merges (the tiny Llama) transformers tests
      ``piece in tokens`` against a 32k-entry list, ~60 s; a set lookup gives the identical
      tokenizer (checked byte for byte) in under a second.
    Everything patched is restored on exit.
    """
    import gguf
    import transformers
    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.integrations import ggml

    readers: dict = {}
    original_reader = gguf.GGUFReader

    def shared_reader(path, mode="r"):
        key = (os.path.abspath(os.fspath(path)), mode)
        if key not in readers:
            readers[key] = original_reader(path, mode)
        return readers[key]

    skeleton_init = ggml.GGUFTokenizerSkeleton.__init__

    def fast_skeleton_init(self, dict_):
        if "merges" not in dict_ and isinstance(dict_.get("tokens"), list):
            dict_ = dict(dict_, tokens=_ListWithSetLookup(dict_["tokens"]))
        skeleton_init(self, dict_)

    verbosity = transformers.logging.get_verbosity()
    bars = transformers.utils.logging.is_progress_bar_enabled()
    gguf_tqdm = gguf_utils.tqdm
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    gguf_utils.tqdm = lambda iterable, *args, **kwargs: iterable
    gguf.GGUFReader = shared_reader
    ggml.GGUFTokenizerSkeleton.__init__ = fast_skeleton_init
    try:
        yield
    finally:
        ggml.GGUFTokenizerSkeleton.__init__ = skeleton_init
        gguf.GGUFReader = original_reader
        gguf_utils.tqdm = gguf_tqdm
        transformers.logging.set_verbosity(verbosity)
        if bars:
            transformers.logging.enable_progress_bar()
        readers.clear()


def _fix_special_tokens(tok, config) -> None:
    """Align the tokenizer's eos with the id the GGUF declares (transformers 5.17 reads it as
    the bos token for Llama-style GGUFs: the tiny Llama and SmolLM2 would never stop), and
    make sure there is a pad token."""
    want = getattr(config, "eos_token_id", None)
    if isinstance(want, int) and 0 <= want < len(tok) and tok.eos_token_id != want:
        token = tok.convert_ids_to_tokens(want)
        log.info("tokenizer eos_token %r -> %r (id %d, as the GGUF declares)", tok.eos_token, token, want)
        tok.eos_token = token
    loading.ensure_pad_token(tok)


def _stop_ids(tok, config) -> list[int]:
    """Ids that end an assistant turn: eos, plus the chat template's end-of-turn token.

    Written into the folder's generation_config.json. Unlike
    :func:`policytune.lm.generation.stop_token_ids`: the tokenizer's eos comes first, a marker
    counts only if the chat template uses it, and only ints survive (lists flattened one level)."""
    ids = collect_stop_ids([tok.eos_token_id, config.eos_token_id], (), tok, template_marker_id, sequences=())
    flat = []
    for i in ids:
        for j in (i if isinstance(i, list) else [i]):
            if isinstance(j, int) and j not in flat:
                flat.append(j)
    return flat


def drop_quantizer_marks(model) -> None:
    """A model loaded from GGUF is flagged as quantized although its weights are already plain
    tensors; the flags block save_pretrained of plain safetensors and training."""
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def convert_gguf(gguf: Path, out: Path, dtype: str) -> tuple[int, str]:
    """GGUF file -> plain Hugging Face folder in ``out``; returns (n_params, chat template sha)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    torch_dtype = loading.resolve_dtype(dtype)
    with gguf_loading():
        t0 = time.monotonic()
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch_dtype)
        drop_quantizer_marks(model)
        model = model.to(torch_dtype)
        log.info("weights dequantized and loaded: %s, %.1fM params, %s, %.0fs",
                 type(model).__name__, model.num_parameters() / 1e6, torch_dtype, time.monotonic() - t0)

        t0 = time.monotonic()
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        _fix_special_tokens(tok, model.config)
        tok.clean_up_tokenization_spaces = False  # BPE: the clean-up would strip spaces before punctuation
        if not tok.chat_template:
            log.info("GGUF has no chat template; using policytune.lm.chat_format.FALLBACK_CHAT_TEMPLATE (ChatML)")
            tok.chat_template = chat.FALLBACK_CHAT_TEMPLATE
        log.info("tokenizer: %d tokens, eos %r, pad %r, %.0fs",
                 len(tok), tok.eos_token, tok.pad_token, time.monotonic() - t0)

        model.config.pad_token_id = tok.pad_token_id
        stop = _stop_ids(tok, model.config)
        model.generation_config = GenerationConfig(
            bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id,
            eos_token_id=stop[0] if len(stop) == 1 else stop, do_sample=False)

        t0 = time.monotonic()
        model.save_pretrained(out)
        tok.save_pretrained(out)
        log.info("saved safetensors + tokenizer in %.0fs", time.monotonic() - t0)
    return model.num_parameters(), chat.template_sha(tok)
