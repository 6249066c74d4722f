"""augment stage: main() writes the outputs and stats; a missing engine exits with the install hint."""

from __future__ import annotations

import shutil

import pytest

from policytune.core.records import read_json, read_jsonl, write_jsonl
from stages.augment import main
from tests.helpers.augment_rows import needs_apertium, rows_for


@needs_apertium
def test_main_writes_outputs_and_stats(tmp_path):
    rows = rows_for(12)
    write_jsonl(tmp_path / "train.jsonl", rows)
    (tmp_path / "params.yaml").write_text(
        "augment:\n  seed: 1\n  weights: {back_translation: 1, char_delete: 1, char_swap: 1}\n")
    args = ["--params", str(tmp_path / "params.yaml"), "--input", str(tmp_path / "train.jsonl"),
            "--output", str(tmp_path / "out.jsonl"), "--skipped", str(tmp_path / "skipped.jsonl"),
            "--stats", str(tmp_path / "stats.json")]
    main(args)
    out = read_jsonl(tmp_path / "out.jsonl")
    stats = read_json(tmp_path / "stats.json")
    assert stats["rows_in"] == 12 and stats["rows_out"] == len(out)
    assert stats["augmented"] + stats["skipped"] == 12
    assert "apertium" in stats["engines"]["back_translation"]
    assert len(read_jsonl(tmp_path / "skipped.jsonl")) == stats["skipped"]


def test_main_missing_engine_exits_with_install_hint(tmp_path, monkeypatch):
    write_jsonl(tmp_path / "train.jsonl", rows_for(2))
    (tmp_path / "params.yaml").write_text("augment:\n  weights: {back_translation: 1}\n")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(SystemExit, match="apt-get install apertium apertium-eng-spa"):
        main(["--params", str(tmp_path / "params.yaml"), "--input", str(tmp_path / "train.jsonl"),
             "--output", str(tmp_path / "o.jsonl"), "--stats", str(tmp_path / "s.json")])

