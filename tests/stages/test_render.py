"""stages.render: main() writes the PDF manifest and stats (paths from its options)."""

from __future__ import annotations

from policytune.core import records
from stages.render import main
from tests.unit.corpus.test_render import _doc, _site


def test_main_writes_manifest_and_stats(tmp_path, monkeypatch):
    rows = _site(tmp_path, {"a": _doc(1), "blank": ""})
    records.write_jsonl(tmp_path / "data/raw/manifest.jsonl", rows)
    (tmp_path / "params.yaml").write_text("render:\n  page_size: A4\n  font_size_pt: 10\n")
    monkeypatch.chdir(tmp_path)
    assert main([]) == 0
    stats = records.read_json("data/stats/render.json")
    assert {"pages_in", "pdfs", "rerendered", "reused", "removed", "rejected_by_reason", "pdf_pages"} <= set(stats)
    assert stats["pdfs"] == 1 and stats["rejected_by_reason"] == {"empty_content": 1}
    man = records.read_jsonl("data/pdf/manifest.jsonl")
    assert {r["status"] for r in man} == {"ok", "rejected"}
    assert all({"doc_id", "url", "title", "html_sha256", "pdf_path", "pages", "chars", "status", "error"} <= set(r)
               for r in man)


def test_main_paths_are_options(tmp_path, monkeypatch):
    rows = _site(tmp_path, {"a": _doc(1)})
    records.write_jsonl(tmp_path / "in/raw.jsonl", rows)
    (tmp_path / "params.yaml").write_text("render:\n  min_chars: 20\n")
    monkeypatch.chdir(tmp_path)
    assert main(["--input", "in/raw.jsonl", "--out", "out/pdf", "--stats", "out/render.json"]) == 0
    assert records.read_json("out/render.json")["pdfs"] == 1
    (row,) = records.read_jsonl("out/pdf/manifest.jsonl")
    assert row["pdf_path"].startswith("out/pdf/") and (tmp_path / row["pdf_path"]).is_file()
