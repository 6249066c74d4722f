"""export_dataset stage: the split/augment/qa files -> data/policytune-qa, a folder that
`datasets.load_dataset` reads; --help runs nothing; a missing input names the stage to run; a
rerun on the same inputs writes the same bytes (DVC sees no change)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import datasets
import pytest
import yaml

from policytune.core.records import write_jsonl
from stages.export_dataset import main
from tests.unit.dataset.test_export import sources

PATHS = {"qa": "data/qa.jsonl", "train": "data/split/train.jsonl", "val": "data/split/val.jsonl",
         "test": "data/split/test.jsonl", "augmented": "data/augment/train.jsonl"}  # where dvc.yaml has them
OUT = Path("data/policytune-qa")


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for key, rows in sources().items():
        write_jsonl(PATHS[key], rows)
    Path("params.yaml").write_text(yaml.safe_dump({"split": {"seed": 0}}))  # no export_dataset section: defaults
    return tmp_path


def tree_digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_stage_writes_a_folder_load_dataset_reads(workdir):
    assert main([]) == 0
    assert sorted(tree_digest(OUT)) == ["README.md", "data/augmented/train.jsonl", "data/default/test.jsonl",
                                        "data/default/train.jsonl", "data/default/validation.jsonl",
                                        "data/qa/train.jsonl"]
    ds = datasets.load_dataset(str(OUT), cache_dir=str(workdir / "cache"))
    assert {s: len(d) for s, d in ds.items()} == {"train": 9, "validation": 3, "test": 4}
    card = (OUT / "README.md").read_text()
    assert card.startswith("---\n") and "# policytune policy QA (`policytune-qa`)" in card
    assert "| default | test | 4 | `data/split/test.jsonl` |" in card  # the stage's real input paths
    assert not [p for p in OUT.parent.iterdir() if p.name.startswith(".")]  # no temp dir left behind

    before = tree_digest(OUT)
    assert main([]) == 0
    assert tree_digest(OUT) == before


def test_params_section_sets_the_card_license(workdir):
    Path("params.yaml").write_text(yaml.safe_dump({"export_dataset": {"license": "cc-by-sa-4.0"}}))
    assert main([]) == 0
    assert "license: cc-by-sa-4.0" in (OUT / "README.md").read_text()


def test_help_runs_nothing(workdir, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--augmented" in out and "export_dataset.license" in out
    assert not OUT.exists()


def test_missing_input_names_the_stage_to_run(workdir):
    Path(PATHS["augmented"]).unlink()
    with pytest.raises(SystemExit, match=r"data/augment/train.jsonl not found; run `dvc repro` up to the augment"):
        main([])
    assert not OUT.exists()
