"""data_metrics stage: data/stats/<stage>.json -> metrics/data.json."""

from __future__ import annotations

import json
from pathlib import Path

from policytune.core.records import write_json
from policytune.report.data_metrics import STAGES
from stages.data_metrics import main


def test_data_metrics_writes_every_stage(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for i, s in enumerate(STAGES):
        write_json(f"data/stats/{s}.json", {"n": i, "by": {"x": True}, "note": "dropped"})
    assert main([]) == 0
    data = json.loads(Path("metrics/data.json").read_text())
    assert list(data) == sorted(STAGES) and data["split"] == {"by": {"x": 1}, "n": STAGES.index("split")}
