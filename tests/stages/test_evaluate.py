"""evaluate stage entry point: params.yaml -> main() with the tiny model, a tiny LoRA adapter and
the local encoder -> answers, per-example rows, plot data, metrics/eval.json and stats; an
unknown params key stops the stage naming the valid ones."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from policytune.core.records import read_json, read_jsonl, write_jsonl
from stages.evaluate import main
from tests.helpers.evaluation import ROWS


def test_main_writes_dvc_outputs(tiny_dir, adapter_dir, encoder_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_jsonl("data/split/test.jsonl", ROWS)
    Path("params.yaml").write_text(yaml.safe_dump({"evaluate": {
        "base_dir": str(tiny_dir), "adapter_dir": str(adapter_dir), "encoder_dir": str(encoder_dir),
        "max_new_tokens": 3, "batch_size": 8, "limit": 3, "dtype": "float32",
        "bootstrap": {"n_resamples": 100, "seed": 1}}}))
    assert main([]) == 0
    answers = read_jsonl("data/eval/answers.jsonl")
    assert {(a["qa_id"], a["model"]) for a in answers} == {(q, m) for q in ("q1", "q2", "q3") for m in ("base", "finetuned")}
    flat = read_json("metrics/eval.json")
    assert flat["n"] == 3 and "delta.bertscore_f1.ci_low" in flat and "finetuned.ref_ppl.mean" in flat
    assert len(read_jsonl("data/eval/per_example.jsonl")) == 6
    assert Path("data/eval/plots/bertscore_f1.json").is_file()
    stats = read_json("data/stats/evaluate.json")
    assert stats["models"]["finetuned"]["tokens"] > 0 and stats["questions"] == 3
    # an unknown params key is refused, naming the valid ones
    Path("params.yaml").write_text(yaml.safe_dump({"evaluate": {"max_new_token": 3}}))
    with pytest.raises(SystemExit, match="unknown key"):
        main([])
