"""The model side of training: tokenizer and base model, LoRA adapters, the LoRA params and
their state, and the loss at labelled positions only (shared prefix run once)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from policytune.core.progress import get_logger
from policytune.lm.chat_format import FALLBACK_CHAT_TEMPLATE
from policytune.training.batching import Batch
from policytune.training.config import LoraParams, TrainConfig

log = get_logger("train")


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
    targets = "all-linear" if lp.target_modules in (["all-linear"], "all-linear") else sorted(lp.target_modules)
    layers = None
    n_layers = getattr(model.config, "num_hidden_layers", None)
    if lp.layers and n_layers and lp.layers < n_layers:
        layers = list(range(n_layers - lp.layers, n_layers))  # the top ones: backward stops below them
    peft_model = get_peft_model(model, LoraConfig(
        r=lp.r, lora_alpha=lp.alpha, lora_dropout=lp.dropout, target_modules=targets,
        layers_to_transform=layers, bias="none", task_type="CAUSAL_LM"))
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


@dataclass
class StudentModel:
    """The base model with LoRA adapters, as the stage trains it."""
    model: Any
    weight_dtype: torch.dtype   # dtype the base weights run in
    saved_dtype: str            # dtype the base folder's config.json says it is saved in
    n_base: int                 # base params
    n_lora: int                 # trainable (LoRA) params


def build_model(cfg: TrainConfig, device: torch.device) -> StudentModel:
    """``cfg.base_dir`` loaded on ``device`` with LoRA adapters (compiled where ``cfg.compile``)."""
    model = load_base_model(cfg.base_dir, cfg.dtype, device)
    disk_cfg = json.loads((Path(cfg.base_dir) / "config.json").read_text())
    on_disk = str(disk_cfg.get("dtype") or disk_cfg.get("torch_dtype") or "float32")
    weight_dtype = next(model.parameters()).dtype
    model = add_lora(model, cfg.lora, cfg.seed)
    if cfg.compile:
        compile_layers(model)
    n_base = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)
    n_lora = sum(p.numel() for _, p in trainable(model))
    return StudentModel(model, weight_dtype, on_disk, n_base, n_lora)


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
