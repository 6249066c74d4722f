"""metrics/data.json keeps the data stages' numbers (bools as 0/1), nested as they wrote them."""

from __future__ import annotations

import pytest

from policytune.core.records import write_json
from policytune.report.data_metrics import STAGES, gather, numeric_only


def test_numeric_only_keeps_numbers_and_drops_the_rest():
    stats = {"ok": 3, "ratio": 0.5, "flag": True, "urls": ["a"], "name": "x", "empty": {},
             "failed_by_reason": {"http_404": 1, "notes": "n"}, "only_text": {"a": "b"}}
    assert numeric_only(stats) == {"ok": 3, "ratio": 0.5, "flag": 1, "failed_by_reason": {"http_404": 1}}


def test_gather_names_the_missing_stages(tmp_path):
    for s in STAGES[:-1]:
        write_json(tmp_path / f"{s}.json", {"n": 1})
    with pytest.raises(FileNotFoundError, match="missing stage stats: augment"):
        gather(tmp_path)
    write_json(tmp_path / "augment.json", {"n": 2, "kept": [1]})
    assert list(gather(tmp_path)) == STAGES and gather(tmp_path)["augment"] == {"n": 2}
