"""corpus.render: incremental, counted rejections; the params hash covers the stage's code."""

from __future__ import annotations

import dataclasses
import time
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


# ---------------------------------------------------------------------------------------------
# retention accounting and the per-page budget (issue 14)
# ---------------------------------------------------------------------------------------------

FILL = "Staff claim travel costs within thirty days of the trip using form FIN-03 and receipts. "


def test_retention_is_measured_from_the_pdf_and_low_pages_are_flagged(tmp_path, fonts):
    teasers = "".join(f"<div class='teaser'><p>Teaser {i}: {FILL[:120]}</p></div>" for i in range(20))
    lossy = f"<html><body><main><h1>Policy</h1><p>{FILL * 40}</p></main>{teasers}</body></html>"
    rows = _site(tmp_path, {"good": _doc(1), "lossy": lossy})
    man, stats = render_pages(rows, tmp_path, "data/pdf", RenderConfig(), [], fonts)
    by = {r["url"].rsplit("/", 1)[1]: r for r in man}
    good, low = by["good"], by["lossy"]
    assert good["status"] == "ok" and good["retention"] >= 0.95
    assert good["pdf_chars"] >= good["main_chars"] - 5 and good["visible_chars"] > good["main_chars"]  # the nav
    assert low["status"] == "low_retention" and low["retention"] < 0.9 and low["pdf_path"]
    assert low["outside_chars"] > 20 * 70
    assert stats["low_retention"] == 1 and stats["retention"]["pages_below"] == 1 and stats["pdfs"] == 2
    assert stats["retention"]["main_chars"] == good["main_chars"] + low["main_chars"]
    # rejected instead of kept, by a param; still counted
    man2, s2 = render_pages(rows, tmp_path, "data/pdf2", RenderConfig(reject_low_retention=True), [], fonts)
    assert s2["rejected_by_reason"] == {"low_retention": 1} and s2["pdfs"] == 1 and s2["low_retention"] == 1
    # reused rows give the same stats
    _, s3 = render_pages(rows, tmp_path, "data/pdf", RenderConfig(), man, fonts)
    assert s3["reused"] == 2 and s3["retention"] == stats["retention"] and s3["low_retention"] == 1


def test_over_budget_and_tag_bomb_pages_are_counted_rejections(tmp_path, fonts):
    slow = "<html><body>" + "<div><p>policy text here</p></div>" * 60_000 + "</body></html>"
    bomb = "<p>x" * 400_000
    rows = _site(tmp_path, {"slow": slow, "bomb": bomb, "fine": _doc(3)})
    t0 = time.monotonic()
    man, stats = render_pages(rows, tmp_path, "data/pdf", RenderConfig(max_seconds=1.0), [], fonts)
    assert time.monotonic() - t0 < 10
    assert stats["rejected_by_reason"] == {"too_complex": 1, "too_slow": 1} and stats["pdfs"] == 1


HOSTILE = {
    "comments": "<!---->" * 700_000 + "<html><body><p>hello policy text here</p></body></html>",
    "meta": "<html><body><p>policy text here and more</p>" + "<meta " * 800_000,
    "script": "<p>policy text here and more</p>" + "<script " * 600_000,
    "script_close": "<script>" + "</script " * 500_000,
    "title": "<title " * 700_000,
    "nospace": "<p>" + "a" * 4_900_000 + "</p>",
    "deep": "<div>" * 100_000 + "deep policy text" + "</div>" * 100_000,
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_pages_finish_within_10_s_with_a_counted_reason(tmp_path, fonts, name):
    rows = _site(tmp_path, {name: HOSTILE[name]})
    t0 = time.monotonic()
    man, stats = render_pages(rows, tmp_path, "data/pdf", RenderConfig(), [], fonts)
    wall = time.monotonic() - t0
    (row,) = man
    assert wall < 10, (name, wall)
    assert row["status"] in ("ok", "low_retention") or row["error"] in ("empty_content", "too_complex", "too_slow", "too_long")
