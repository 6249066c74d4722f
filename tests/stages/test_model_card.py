"""model_card stage: models/adapter/policytune_train.json + metrics/eval.json (+ the CI level of
data/stats/evaluate.json) -> models/card/README.md, the complete card; its own out only."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from policytune.core.records import write_json
from stages.model_card import main
from tests.helpers.report_rows import eval_flat, fixture_rows
from tests.unit.report.test_model_card import split_card, train_info

PATHS = {"adapter": "models/adapter", "eval_json": "metrics/eval.json", "eval_stats": "data/stats/evaluate.json",
         "dataset": "data/policytune-qa", "out": "models/card/README.md"}  # where dvc.yaml has them


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("models/student").mkdir(parents=True)
    write_json(Path(PATHS["adapter"]) / "policytune_train.json", train_info(Path("models/student")))
    Path(PATHS["adapter"], "README.md").write_text("the train stage's card\n")
    pe, _ = fixture_rows()
    write_json(PATHS["eval_json"], eval_flat(pe))
    write_json(PATHS["eval_stats"], {"params": {"bootstrap": {"ci": 0.9}}})
    Path(PATHS["dataset"]).mkdir(parents=True)
    Path(PATHS["dataset"], "README.md").write_text("---\n---\n")
    Path("params.yaml").write_text(yaml.safe_dump({"train": {"epochs": 1}}))
    return tmp_path


def test_stage_writes_the_complete_card_and_nothing_else(workdir):
    adapter_card = Path(PATHS["adapter"], "README.md").read_text()
    assert main([]) == 0
    meta, body = split_card(Path(PATHS["out"]).read_text())
    assert meta["datasets"] == ["policytune-qa"] and meta["model-index"][0]["results"][0]["metrics"]
    assert "(90% CI)" in meta["model-index"][0]["results"][0]["metrics"][0]["name"]
    assert "Base weights dequantized from a Q4_1 GGUF" in body
    assert Path(PATHS["adapter"], "README.md").read_text() == adapter_card  # train's out untouched


def test_params_section_and_missing_inputs(workdir):
    Path("params.yaml").write_text(yaml.safe_dump({"model_card": {"license": "other"}}))
    assert main([]) == 0
    assert split_card(Path(PATHS["out"]).read_text())[0]["license"] == "other"
    Path(PATHS["eval_json"]).unlink()
    with pytest.raises(SystemExit, match="metrics/eval.json not found; run the evaluate stage first"):
        main([])


def test_help_runs_nothing(workdir, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0 and "model_card.license" in capsys.readouterr().out
    assert not Path(PATHS["out"]).exists()
