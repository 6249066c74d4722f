"""corpus.render: incremental, counted rejections; the params hash covers the stage's code."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from policytune.core import records
from policytune.core.imports import closure_files
from policytune.corpus import render as corpus_render
from policytune.corpus.html import RenderConfig
from policytune.corpus.pdf import Fonts
from policytune.corpus.render import params_hash, render_pages


@pytest.fixture(scope="module")
def fonts():
    return Fonts(RenderConfig())


# ---------------------------------------------------------------------------------------------
# incremental rendering, counted rejections
# ---------------------------------------------------------------------------------------------

def _site(base: Path, pages: dict[str, str]) -> list[dict]:
    rows = []
    for name, html in pages.items():
        path = base / "data/raw/pages" / f"{name}.html"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(html, encoding="utf-8")
        rows.append({"url": f"https://northwind.example/{name}", "final_url": f"https://northwind.example/{name}",
                     "status": "ok", "content_type": "text/html", "sha256": records.sha256_text(html),
                     "path": f"data/raw/pages/{name}.html", "error": None})
    return rows


def _doc(n: int) -> str:
    return (f"<html><head><title>Policy {n}</title></head><body><nav>menu</nav><main><h1>Policy {n}</h1>"
            f"<p>Rule {n}: approvals within {n} days by the {n}th committee.</p></main></body></html>")


def test_incremental_rerender_touches_only_the_changed_page(tmp_path, fonts):
    cfg = RenderConfig()
    rows = _site(tmp_path, {"a": _doc(1), "b": _doc(2), "c": _doc(3), "empty": "  \n ", "chrome": "<nav>x</nav>"})
    rows.append({"url": "https://northwind.example/gone", "status": "http_404", "path": None})
    man, stats = render_pages(rows, tmp_path, "data/pdf", cfg, [], fonts)
    assert stats["pages_in"] == 5 and stats["pdfs"] == 3 and stats["rerendered"] == 5
    assert stats["rejected_by_reason"] == {"empty_content": 2} and stats["skipped_not_ok"] == 1
    assert stats["pdf_pages"] == 3
    ok = {r["url"].rsplit("/", 1)[1]: r for r in man if r["status"] == "ok"}
    for r in ok.values():
        assert r["pdf_path"] == f"data/pdf/{records.stable_id(r['url'])}.pdf"
        assert records.sha256_file(tmp_path / r["pdf_path"]) == r["pdf_sha256"]
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in (tmp_path / "data/pdf").glob("*.pdf")}

    # no change: everything reused, nothing written
    man2, s2 = render_pages(rows, tmp_path, "data/pdf", cfg, man, fonts)
    assert (s2["rerendered"], s2["reused"], s2["removed"]) == (0, 5, 0) and man2 == sorted(man, key=lambda r: (r["url"], r["doc_id"]))

    # one page changed, one page gone
    rows3 = _site(tmp_path, {"a": _doc(1), "b": _doc(22)})
    man3, s3 = render_pages(rows3, tmp_path, "data/pdf", cfg, man2, fonts)
    assert (s3["rerendered"], s3["reused"], s3["removed"]) == (1, 1, 1)
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in (tmp_path / "data/pdf").glob("*.pdf")}
    a_pdf, b_pdf, c_pdf = (Path(ok[k]["pdf_path"]).name for k in "abc")
    assert after[a_pdf] == before[a_pdf]
    assert after[b_pdf] != before[b_pdf] and c_pdf not in after

    # a render param change re-renders everything
    _, s4 = render_pages(rows3, tmp_path, "data/pdf", dataclasses.replace(cfg, font_size_pt=11.0), man3, fonts)
    assert s4["rerendered"] == 2 and s4["reused"] == 0



def test_params_hash_covers_every_module_render_imports(fonts, monkeypatch):
    files = {p.as_posix() for p in closure_files("stages.render")}
    assert {"stages/render.py", "policytune/corpus/html.py", "policytune/corpus/pdf.py",
            "policytune/corpus/render.py", "policytune/core/records.py"} <= files
    cfg = RenderConfig()
    h = params_hash(cfg, fonts)
    assert params_hash(cfg, fonts) == h
    monkeypatch.setattr(corpus_render, "source_fingerprint", lambda name: f"changed {name}")
    assert params_hash(cfg, fonts) != h
