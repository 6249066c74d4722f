"""Render's incremental pass over the scrape manifest: scraped HTML pages -> one PDF per page.

data/pdf is a DVC ``persist`` output: a page is re-rendered only when its HTML sha256 or the
params hash (render params + the source of every project module the render stage imports +
PyMuPDF version + fonts) changed; PDFs of pages no longer in the scrape manifest are deleted.
Pages with no main text are counted rejections (``empty_content``), never crashes.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymupdf

from policytune.core import records
from policytune.core.imports import source_fingerprint
from policytune.core.params import to_dict
from policytune.core.progress import Progress, get_logger
from policytune.corpus.html import RenderConfig, extract_main
from policytune.corpus.pdf import Fonts, TooLong, render_pdf

STAGE_MODULE = "stages.render"   # its import closure is the code behind every PDF


def params_hash(cfg: RenderConfig, fonts: Fonts) -> str:
    code = source_fingerprint(STAGE_MODULE)
    return records.stable_id(to_dict(cfg), code, pymupdf.VersionBind, fonts.signature)


@dataclass
class _Pass:
    """What one render_pages call shares between its pages."""
    base: Path
    pdf_dir: str
    cfg: RenderConfig
    fonts: Fonts
    phash: str
    old: dict[str, dict]
    log: Any
    stats: dict
    rejected: Counter = field(default_factory=Counter)
    seen: set[str] = field(default_factory=set)


def render_pages(raw_rows: list[dict], base: Path, pdf_dir: str, cfg: RenderConfig,
                 old_manifest: list[dict] | None = None, fonts: Fonts | None = None,
                 log=None) -> tuple[list[dict], dict]:
    """Render every ok page of ``raw_rows`` into ``base/pdf_dir``; returns (manifest rows, stats).

    Reuses a previous PDF when its html sha256 and params hash match ``old_manifest``; deletes
    PDFs of pages that are gone. Paths in rows are relative to ``base``.
    """
    log = log or get_logger("render")
    fonts = fonts or Fonts(cfg)
    phash = params_hash(cfg, fonts)
    out_dir = base / pdf_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    old = {r["doc_id"]: r for r in (old_manifest or []) if "doc_id" in r}

    ok_rows, skipped = _ok_rows(raw_rows)
    stats = {"pages_in": len(ok_rows), "pdfs": 0, "rerendered": 0, "reused": 0, "removed": 0,
             "pdf_pages": 0, "chars": 0}
    run = _Pass(base, pdf_dir, cfg, fonts, phash, old, log, stats)
    rows_out: list[dict] = []
    prog = Progress(log, "pages", len(ok_rows))
    for r in ok_rows:
        rows_out.append(_page(run, r, prog))

    _remove_stale(out_dir, rows_out, stats)
    rows_out.sort(key=lambda r: (r["url"], r["doc_id"]))
    rejected = run.rejected
    stats["rejected"] = sum(rejected.values())
    stats["rejected_by_reason"] = dict(sorted(rejected.items()))
    stats["skipped_not_ok"] = sum(skipped.values())
    return rows_out, stats


def _ok_rows(raw_rows: list[dict]) -> tuple[list[dict], Counter]:
    """The scrape rows with status ok, and a count of the others by status."""
    skipped: Counter = Counter()
    ok_rows = []
    for r in raw_rows:
        if r.get("status") != "ok":
            skipped[str(r.get("status") or "unknown")] += 1
            continue
        ok_rows.append(r)
    return ok_rows, skipped


def _page(run: _Pass, r: dict, prog: Progress) -> dict:
    """The manifest row of one ok scrape row: rejected, reused from the old manifest, or rendered."""
    url = r.get("url") or r.get("final_url") or r.get("path") or ""
    doc_id = records.stable_id(url)
    pdf_rel = f"{run.pdf_dir}/{doc_id}.pdf"
    row = {"doc_id": doc_id, "url": url, "final_url": r.get("final_url") or url, "title": "",
           "html_sha256": "", "pdf_path": None, "pdf_sha256": None, "pages": 0, "chars": 0,
           "status": "ok", "error": None, "root": None, "params_hash": run.phash}
    prog.update(note=url[-60:])
    if doc_id in run.seen:
        row.update(status="rejected", error="duplicate_url")
        run.rejected["duplicate_url"] += 1
        return row
    run.seen.add(doc_id)
    src = run.base / str(r.get("path") or "")
    if not r.get("path") or not src.is_file():
        row.update(status="rejected", error="missing_html")
        run.rejected["missing_html"] += 1
        return row
    data = src.read_bytes()
    row["html_sha256"] = records.sha256_bytes(data)
    prev = run.old.get(doc_id)
    if (prev and prev.get("html_sha256") == row["html_sha256"] and prev.get("params_hash") == run.phash
            and prev.get("url") == url and _prev_valid(prev, run.base)):
        _count_reused(run, prev)
        return prev
    run.stats["rerendered"] += 1
    return _render(run, row, data, url, pdf_rel)


def _count_reused(run: _Pass, prev: dict) -> None:
    stats = run.stats
    stats["reused"] += 1
    if prev["status"] == "ok":
        stats["pdfs"] += 1
        stats["pdf_pages"] += prev["pages"]
        stats["chars"] += prev["chars"]
    else:
        run.rejected[prev["error"]] += 1


def _render(run: _Pass, row: dict, data: bytes, url: str, pdf_rel: str) -> dict:
    """Extract the main content of one page and render it; fills and returns ``row``."""
    cfg, base, log, stats, rejected = run.cfg, run.base, run.log, run.stats, run.rejected
    try:
        content = extract_main(data, url, cfg)
    except Exception as e:  # unparseable: counted, never fatal
        log.warning("%s: unparseable HTML (%s: %s)", url, type(e).__name__, e)
        content = None
    if content is None or content.chars < cfg.min_chars:
        row.update(status="rejected", error="empty_content",
                   title=content.title if content else "", chars=content.chars if content else 0)
        rejected["empty_content"] += 1
        (base / pdf_rel).unlink(missing_ok=True)
        return row
    row.update(title=content.title, chars=content.chars, root=content.root)
    try:
        pdf, pages = render_pdf(content, url, cfg, run.fonts)
    except TooLong as e:
        row.update(status="rejected", error="too_long")
        log.warning("%s: %s", url, e)
        rejected["too_long"] += 1
        (base / pdf_rel).unlink(missing_ok=True)
        return row
    records.atomic_write_bytes(base / pdf_rel, pdf)
    row.update(pdf_path=pdf_rel, pdf_sha256=records.sha256_bytes(pdf), pages=pages)
    stats["pdfs"] += 1
    stats["pdf_pages"] += pages
    stats["chars"] += content.chars
    return row


def _remove_stale(out_dir: Path, rows_out: list[dict], stats: dict) -> None:
    """Delete PDFs (and leftover temp files) in ``out_dir`` that no ok row names."""
    keep = {f"{r['doc_id']}.pdf" for r in rows_out if r["status"] == "ok"}
    for p in sorted(out_dir.iterdir()):
        if p.name == "manifest.jsonl" or p.name in keep:
            continue
        if p.is_file() and (p.suffix == ".pdf" or p.name.endswith(".tmp")):
            p.unlink()
            stats["removed"] += p.suffix == ".pdf"


def _prev_valid(prev: dict, base: Path) -> bool:
    if prev.get("status") != "ok":
        return prev.get("status") == "rejected" and bool(prev.get("error"))
    p = base / str(prev.get("pdf_path") or "")
    return p.is_file() and records.sha256_file(p) == prev.get("pdf_sha256")
