"""bench/bench_train.py mechanics on the tiny model: the three loops (the study's naive Trainer,
the tuned Trainer baseline, the train stage's loop) all train on the same rows and the result
carries their rates, the ratios and MFU on assistant and on all real tokens."""

from __future__ import annotations

import json

from bench import bench_train


def test_bench_train_runs_all_three_loops_on_the_same_rows(tiny_model_dir, tmp_path):
    out = tmp_path / "train.json"
    assert bench_train.main([str(out), "--base", str(tiny_model_dir), "--data", str(tmp_path / "none.jsonl"),
                             "--rows", "24", "--seconds", "1", "--peak-seconds", "0.2"]) == 0
    r = json.loads(out.read_text())
    assert r["data"]["rows"] == 24 and r["data"]["source"].startswith("synthetic")
    for loop in ("naive", "tuned", "ours"):
        assert r[loop]["useful_tokens_per_s"] > 0, loop
        assert r[loop]["steps_timed"] >= 1, loop
    t = r["tuned"]
    # dynamic padding: the tuned baseline pads to the batch's longest row, never to 512
    assert t["nonpad_tokens_per_s"] <= t["padded_tokens_per_s"]
    assert r["ours"]["real_tokens_per_s"] >= r["ours"]["useful_tokens_per_s"]
    assert r["ratio_vs_tuned_useful_tokens_per_s"] > 0 and r["ratio_useful_tokens_per_s"] > 0
    assert 0 < r["mfu"]["all_real_tokens_vs_best_peak"] and 0 < r["mfu"]["tuned_all_real_tokens_vs_best_peak"]
