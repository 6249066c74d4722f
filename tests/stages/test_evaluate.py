"""evaluate stage entry point: params.yaml -> main() with the tiny model, a tiny LoRA adapter and
the local encoder -> answers, per-example rows, plot data, metrics/eval.json and stats; an
unknown params key stops the stage naming the valid ones."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from policytune.core.records import read_json, read_jsonl, write_jsonl
from stages.evaluate import main
from tests.helpers.evaluation import CHUNKS, ROWS

GENERAL = Path(__file__).resolve().parents[2] / "data/general_skills.jsonl"


def test_main_writes_dvc_outputs(tiny_dir, adapter_dir, encoder_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_jsonl("data/split/test.jsonl", ROWS)
    write_jsonl("data/chunks.jsonl", CHUNKS)
    Path("params.yaml").write_text(yaml.safe_dump({"evaluate": {
        "base_dir": str(tiny_dir), "adapter_dir": str(adapter_dir), "encoder_dir": str(encoder_dir),
        "max_new_tokens": 3, "batch_size": 8, "limit": 3, "dtype": "float32",
        "bootstrap": {"n_resamples": 100, "seed": 1}}}))
    assert main(["--general", str(GENERAL)]) == 0
    answers = read_jsonl("data/eval/answers.jsonl")
    variants = ("base", "finetuned", "base_rag", "finetuned_rag")  # the default: four variants
    assert {(a["qa_id"], a["model"]) for a in answers} == {(q, m) for q in ("q1", "q2", "q3") for m in variants}
    flat = read_json("metrics/eval.json")
    assert flat["n"] == 3 and "delta.bertscore_f1.ci_low" in flat and "finetuned.ref_ppl.mean" in flat
    assert "delta_rag.fact_recall.ci_low" in flat and "finetuned_rag.looping_answers" in flat
    assert len(read_jsonl("data/eval/per_example.jsonl")) == 12
    general = read_jsonl("data/eval/general.jsonl")  # the forgetting check, closed-book, both models
    assert len(general) == 80 and {a["model"] for a in general} == {"general_base", "general_finetuned"}
    assert all(a["general_correct"] in (0.0, 1.0) for a in general)
    assert "general.delta.accuracy.ci_low" in flat
    # a missing general-skill set is a clear error, not a crash
    with pytest.raises(SystemExit, match="general-skill set"):
        main(["--general", "nope.jsonl"])
    assert Path("data/eval/plots/bertscore_f1.json").is_file()
    stats = read_json("data/stats/evaluate.json")
    assert stats["models"]["finetuned"]["tokens"] > 0 and stats["questions"] == 3
    # an unknown params key is refused, naming the valid ones
    Path("params.yaml").write_text(yaml.safe_dump({"evaluate": {"max_new_token": 3}}))
    with pytest.raises(SystemExit, match="unknown key"):
        main([])
