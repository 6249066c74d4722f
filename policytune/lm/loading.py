"""Loading prepared model folders: dtype choice, causal LMs (with the CPU grouped-query
attention path), int8 quantization, tokenizers and the sentence-transformers encoder.

Folders come from ``stages/prepare_models.py`` (see :mod:`policytune.lm.catalog`); nothing
here downloads weights.
"""

from __future__ import annotations

import re
from pathlib import Path

from policytune.lm.catalog import ModelSourceError, saved_dtype  # noqa: F401  (saved_dtype re-exported)

def bf16_supported(device: str | None = None) -> bool:
    """Whether bfloat16 matmuls run natively (fast) on ``device`` (default: cuda if present)."""
    import torch

    if (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    try:  # Linux: the CPU flags say whether bf16 is native (AVX512-BF16 or AMX)
        flags = set(re.search(r"^flags\s*:(.*)$", Path("/proc/cpuinfo").read_text(), re.M)
                    .group(1).split())
        return bool(flags & {"avx512_bf16", "amx_bf16"})
    except (OSError, AttributeError):  # elsewhere: what oneDNN reports
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except Exception:
            return False


def _local_dir(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise ModelSourceError(f"model folder {path} does not exist; prepared models live in "
                               "models/<role>/ (run `dvc repro prepare_models`)")
    return path


def resolve_dtype(dtype, saved: str | None = None, device: str = "cpu"):
    """A torch dtype from "auto" | "bfloat16" | "float16" | "float32" | a torch.dtype.

    "auto" keeps the dtype saved on disk, except bfloat16 on a CPU without native bf16,
    which loads as float32 (bf16 there is emulated and several times slower)."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        name = saved or "float32"
        if name == "bfloat16" and not bf16_supported(device):
            name = "float32"
    else:
        name = str(dtype).removeprefix("torch.")
    value = getattr(torch, name, None)
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise ValueError(f"unknown dtype {dtype!r}; use auto, bfloat16, float16 or float32")
    return value


def load_causal_lm(path: str | Path, dtype="auto", device: str | None = None):
    """A prepared causal LM folder, on ``device`` (default cuda if present, else cpu), in eval mode."""
    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM

    transformers.utils.logging.disable_progress_bar()  # DVC logs: no per-tensor tqdm bars
    path = _local_dir(path)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    saved = str(getattr(config, "dtype", None) or "float32").removeprefix("torch.")
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=resolve_dtype(dtype, saved, device), local_files_only=True)
    if str(device).startswith("cpu"):  # on CUDA, enable_gqa with a mask falls back to the slow math kernel
        use_gqa_attention(model)
    contiguous_head_input(model)
    return model.to(device).eval()


def _contiguous_input(module, args):
    x = args[0] if args else None
    if x is None or not hasattr(x, "is_contiguous") or x.is_contiguous():
        return None
    return (x.contiguous(), *args[1:])


def contiguous_head_input(model) -> None:
    """Make the output head's input contiguous. With ``logits_to_keep`` transformers feeds it a
    view (``hidden[:, -k:, :]``), and torch 2.13's CPU bf16 ``linear`` with a frozen weight
    (``requires_grad=False``: the fine-tuned model, merged or loaded through PEFT) on a
    non-contiguous 3-D input copies the weight once per row: a prefill of 30 prompts with Qwen2.5-0.5B's
    151,936 x 896 head allocated 7.8 GB and took 16 s instead of 0.03 s (measured on a 2-core
    bf16 CPU: the evaluate stage's whole-run peak of 11 GB; tests/unit/lm/test_head_input.py).
    Copying the ``k`` kept rows costs nothing by comparison."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if get else None
    if head is not None and not getattr(head, "_policytune_contiguous", False):
        head.register_forward_pre_hook(_contiguous_input)
        head._policytune_contiguous = True


GQA_SDPA = "policytune_sdpa"


def _sdpa_gqa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
              is_causal=None, **kwargs):
    """transformers' "sdpa" attention, except that grouped-query attention with a padding mask
    runs in torch's kernel with ``enable_gqa=True``. Stock transformers only does that without a
    mask; with one (every padded batch: batched generation, training) it first copies each
    key/value head once per query head (``repeat_kv``), for every layer at every decode step.
    Same outputs (to float rounding; tests/unit/lm/test_generation.py); measured on a 2-core AVX2 CPU, the
    attention of a decode step is 5x faster for SmolLM2 (9 query / 3 key-value heads, batch 30)
    and 20x for Qwen2.5-0.5B (14 / 2 heads, batch 16, 600 cached tokens)."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    groups = getattr(module, "num_key_value_groups", 1)
    b, heads, q_len, dim = query.shape
    if groups <= 1 or kwargs.get("position_bias") is not None or kwargs.get("output_attentions"):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)
    if q_len == 1 and groups >= 4 and (attention_mask is None or attention_mask.shape[1] == 1):
        # A decode step: the query heads of one key/value head become that head's "query
        # positions" (the 1-row mask broadcasts over them). 1.9x faster than enable_gqa for
        # 7 heads per group (Qwen2.5-0.5B), slower for 3 (SmolLM2), hence groups >= 4.
        out = torch.nn.functional.scaled_dot_product_attention(
            query.reshape(b, heads // groups, groups, dim), key, value, attn_mask=attention_mask,
            dropout_p=dropout, scale=scaling)
        return out.reshape(b, 1, heads, dim), None
    if attention_mask is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling,
        is_causal=False, enable_gqa=True)
    return out.transpose(1, 2).contiguous(), None


def use_gqa_attention(model) -> bool:
    """Switch a model that uses transformers' "sdpa" attention to :func:`_sdpa_gqa` (its masks
    are sdpa's); returns whether it switched. Other implementations are left alone. For CPU
    models only (measured there; on CUDA torch runs enable_gqa with a mask in its math kernel)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    if getattr(model.config, "_attn_implementation", None) != "sdpa":
        return False
    AttentionInterface.register(GQA_SDPA, _sdpa_gqa)
    AttentionMaskInterface.register(GQA_SDPA, sdpa_mask)
    try:
        model.set_attn_implementation(GQA_SDPA)
    except (ValueError, AttributeError):  # a model class that cannot switch keeps stock sdpa
        return False
    return getattr(model.config, "_attn_implementation", None) == GQA_SDPA


QUANTIZE = ("none", "int8", "auto")


def resolve_quantize(quantize: str, device: str, dtype) -> str:
    """ "none" | "int8" for an inference model. "auto" = int8 on a CPU running float32 (no native
    bf16): dynamic int8 Linear layers (fbgemm) cut a decode step of the 0.5B teacher from 0.48 to
    0.11 s at batch 16 and its prefill by 1.2x (1.5B: 4.9x and 1.7x), measured on a 2-core AVX2
    EPYC; on a GPU or with bf16 it stays off."""
    import torch

    if quantize not in QUANTIZE:
        raise ValueError(f"unknown quantize {quantize!r}; use one of {', '.join(QUANTIZE)}")
    if quantize == "auto":
        return "int8" if str(device).startswith("cpu") and dtype == torch.float32 else "none"
    if quantize == "int8" and not str(device).startswith("cpu"):
        raise ValueError("quantize: int8 is dynamic CPU quantization; use none (or auto) on a GPU")
    return quantize


def quantize_int8(model):
    """Dynamic int8 quantization of every nn.Linear (weights int8 per output channel,
    activations quantized on the fly per batch); embeddings and norms become float32. Inference
    only. Layer by layer, so a model loaded in bf16 never exists in float32 as a whole: the 1.5B
    judge peaks at ~5 GB instead of ~11 GB (bf16 on disk -> float32 in memory)."""
    import warnings

    import torch
    from torch.ao.nn.quantized.dynamic import Linear as QLinear
    from torch.ao.quantization import per_channel_dynamic_qconfig

    with warnings.catch_warnings():  # torch.ao deprecation notice: the API still works in 2.13
        warnings.simplefilter("ignore")
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if type(child) is not torch.nn.Linear:
                    continue
                f = torch.nn.Linear(child.in_features, child.out_features, bias=child.bias is not None,
                                    device="meta")
                f.weight = torch.nn.Parameter(child.weight.detach().float(), requires_grad=False)
                if child.bias is not None:
                    f.bias = torch.nn.Parameter(child.bias.detach().float(), requires_grad=False)
                f.qconfig = per_channel_dynamic_qconfig
                setattr(parent, name, QLinear.from_float(f))
                del f, child
    model = model.float()
    contiguous_head_input(model)  # a replaced head lost the hook
    return model


def ensure_pad_token(tokenizer) -> None:
    """Give a tokenizer a pad token if it has none: its unk token, else its eos token."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token


def load_tokenizer(path: str | Path, padding_side: str = "left"):
    """The tokenizer of a prepared model folder; left padding (for batched generation) by default."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(_local_dir(path), local_files_only=True)
    tok.padding_side = padding_side
    ensure_pad_token(tok)
    return tok


def load_encoder(path: str | Path, device: str | None = None):
    """A prepared sentence-transformers folder (the encoder role)."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(_local_dir(path)), device=device, local_files_only=True)
