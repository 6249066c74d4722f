"""stages.extract: main() writes the chunks and stats."""

from __future__ import annotations

import pytest

from policytune.core import records
from stages.extract import main
from tests.unit.corpus.test_chunking import render_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return render_corpus(tmp_path_factory.mktemp("extract"))


def test_main_writes_chunks_and_stats(corpus, tmp_path, monkeypatch):
    base, rows = corpus
    for r in rows:
        if r["pdf_path"]:
            (tmp_path / r["pdf_path"]).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / r["pdf_path"]).write_bytes((base / r["pdf_path"]).read_bytes())
    records.write_jsonl(tmp_path / "data/pdf/manifest.jsonl", rows[:1])
    (tmp_path / "params.yaml").write_text("extract:\n  max_tokens: 180\n  overlap_tokens: 30\n")
    monkeypatch.chdir(tmp_path)
    assert main([]) == 0
    stats = records.read_json("data/stats/extract.json")
    for k in ("docs", "pdf_pages", "chunks", "characters", "tokens", "chunks_per_doc_min",
              "chunks_per_doc_max", "chunks_per_doc_mean"):
        assert k in stats
    chunks = records.read_jsonl("data/chunks.jsonl")
    assert stats["chunks"] == len(chunks) > 0 and stats["docs"] == 1
    assert all(c["n_tokens"] <= 180 for c in chunks)
