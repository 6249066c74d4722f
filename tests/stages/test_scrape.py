"""scrape stage: ``main`` on local folder sources (stale pages removed, manifest and stats
written), the min_ok_fraction exit of ``python -m stages.scrape``, and ``--help``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from policytune.core import records
from stages.scrape import main
from tests.helpers.repo import REPO
from tests.unit.corpus.test_scrape import CP1252_HTML, make_local_site, write_params


def test_local_folder_sources_via_main(tmp_path, monkeypatch):
    make_local_site(tmp_path)
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path, sources=["site", "site/hr/leave.htm", "missing.html"],
                 min_ok_fraction=0.5)
    stale = tmp_path / "data/raw/pages/stale-000000000000.html"
    stale.parent.mkdir(parents=True)
    stale.write_text("old")
    assert main(["--params", "params.yaml"]) == 0

    rows = records.read_jsonl("data/raw/manifest.jsonl")
    assert [r["url"] for r in rows] == ["file:missing.html", "file:site/hr/leave.htm",
                                        "file:site/hr/legacy.html", "file:site/index.html"]
    by_url = {r["url"]: r for r in rows}
    assert by_url["file:missing.html"]["status"] == "not_found"
    legacy = by_url["file:site/hr/legacy.html"]
    assert legacy["status"] == "ok" and legacy["encoding"] == "cp1252"
    assert legacy["path"].startswith("data/raw/pages/site_hr_legacy-")
    assert "\u20ac45" in Path(legacy["path"]).read_text(encoding="utf-8")
    assert legacy["sha256"] == records.sha256_bytes(CP1252_HTML)
    assert legacy["final_url"] == legacy["url"] and legacy["http_status"] is None
    assert not stale.exists()
    assert sorted(os.listdir("data/raw/pages")) == sorted(
        Path(r["path"]).name for r in rows if r["path"])
    stats = records.read_json("data/stats/scrape.json")
    assert stats["sources"] == 4 and stats["ok"] == 3
    assert stats["failed_by_reason"] == {"not_found": 1}



def test_min_ok_fraction_fails_with_summary_after_writing_manifest(tmp_path):
    make_local_site(tmp_path)
    write_params(tmp_path, sources=["gone1.html", "gone2.html", "site/index.html"],
                 min_ok_fraction=0.5)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.run([sys.executable, "-m", "stages.scrape"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1, p.stderr
    assert "only 1 of 3 pages succeeded (33% < min_ok_fraction 50%)" in p.stderr
    assert "not_found x2 (file:gone1.html, file:gone2.html" in p.stderr
    rows = records.read_jsonl(tmp_path / "data/raw/manifest.jsonl")
    assert [r["status"] for r in rows] == ["not_found", "not_found", "ok"]
    assert records.read_json(tmp_path / "data/stats/scrape.json")["failed"] == 2



def test_help_lists_paths_and_params(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--out" in out and "--stats" in out and "default: data/raw" in out
    assert "scrape.sources = ['data/sample_site']" in out and "scrape.min_ok_fraction = 0.5" in out
