"""Render's incremental pass over the scrape manifest: scraped HTML pages -> one PDF per page.

data/pdf is a DVC ``persist`` output: a page is re-rendered only when its HTML sha256 or the
params hash (render params + the source of every project module the render stage imports +
PyMuPDF version + fonts) changed; PDFs of pages no longer in the scrape manifest are deleted.

Each page that needs work is rendered by ``render_one`` in a forked worker
(:mod:`policytune.core.isolate`, ``render.workers`` at a time) that is killed after
``render.max_seconds``: a hostile page cannot hang the stage. Retention: the worker counts the
PDF's own text and compares it with the page's main text (visible text minus chrome, from
``extract_main``); a page under ``render.min_retention`` gets status ``low_retention`` (PDF kept
and chunked) or is rejected with that reason (``reject_low_retention``) -- counted either way,
never a silent ok. Rejections, all counted: empty_content, too_long, too_slow, too_complex,
unparseable, low_retention, duplicate_url, missing_html.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymupdf

from policytune.core import records
from policytune.core.imports import source_fingerprint
from policytune.core.params import to_dict
from policytune.core.progress import Progress, get_logger
from policytune.core.isolate import Outcome, default_workers, map_with_budget
from policytune.corpus.html import RenderConfig, TooComplex, extract_main, nonspace_chars
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
    PDFs of pages that are gone. Paths in rows are relative to ``base``. Pages that need work
    are rendered in forked workers (``cfg.workers``), each under ``cfg.max_seconds``.
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
    rows_out: list[dict | None] = []
    todo: list[tuple[int, dict, bytes]] = []
    for r in ok_rows:
        row, data = _page(run, r)
        if data is not None:
            todo.append((len(rows_out), row, data))
        rows_out.append(row)

    prog = Progress(log, "pages", len(todo))
    work = [(data, row["url"], cfg, fonts) for _, row, data in todo]

    def done(k: int, outcome: Outcome) -> None:
        i, row, _ = todo[k]
        rows_out[i] = _finish(run, row, outcome)
        prog.update(note=row["url"][-60:])

    workers = cfg.workers or default_workers()
    map_with_budget(render_one, work, cfg.max_seconds, min(workers, max(1, len(work))), on_done=done)

    final = [r for r in rows_out if r is not None]
    _remove_stale(out_dir, final, stats)
    final.sort(key=lambda r: (r["url"], r["doc_id"]))
    for r in final:
        if r["status"] in PDF_STATUSES:
            stats["pdfs"] += 1
            stats["pdf_pages"] += r["pages"]
            stats["chars"] += r["chars"]
        else:
            run.rejected[r["error"]] += 1
    rejected = run.rejected
    stats["rejected"] = sum(rejected.values())
    stats["rejected_by_reason"] = dict(sorted(rejected.items()))
    stats["skipped_not_ok"] = sum(skipped.values())
    stats.update(retention_stats(final, cfg))
    return final, stats


PDF_STATUSES = ("ok", "low_retention")   # rows that have a PDF (extract chunks both)


def retention_stats(rows: list[dict], cfg: RenderConfig) -> dict:
    """Sums over the pages that have a PDF: visible, chrome, main and PDF characters, the
    share of main text kept, pages under ``min_retention``, sections found and kept."""
    have = [r for r in rows if r["status"] in PDF_STATUSES and r.get("main_chars") is not None]
    main = sum(r["main_chars"] for r in have)
    kept = sum(min(r["pdf_chars"], r["main_chars"]) for r in have)
    rets = [r["retention"] for r in have]
    titles = Counter(r.get("title_source") or "unknown" for r in have)
    return {
        "low_retention": sum(r["status"] == "low_retention" or r.get("error") == "low_retention" for r in rows),
        "retention": {
            "min_retention": cfg.min_retention,
            "pages": len(have),
            "pages_below": sum(x < cfg.min_retention for x in rets),
            "min": round(min(rets), 4) if rets else None,
            "mean": round(sum(rets) / len(rets), 4) if rets else None,
            "kept_share": round(kept / main, 4) if main else None,
            "visible_chars": sum(r["visible_chars"] for r in have),
            "chrome_chars": sum(r["chrome_chars"] for r in have),
            "main_chars": main,
            "pdf_chars": sum(r["pdf_chars"] for r in have),
        },
        "sections": {"found": sum(r.get("sections_found") or 0 for r in have),
                     "kept": sum(r.get("sections_kept") or 0 for r in have)},
        "titles_by_source": dict(sorted(titles.items())),
        # a list, so data_metrics leaves it out of metrics/data.json; the report shows it
        "low_retention_pages": [{k: r.get(k) for k in ("url", "status", "retention", "pdf_chars", "main_chars")}
                                for r in rows if r.get("retention") is not None
                                and r["retention"] < cfg.min_retention][:50],
    }


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


def _page(run: _Pass, r: dict) -> tuple[dict, bytes | None]:
    """The manifest row of one ok scrape row -- rejected or reused from the old manifest -- and
    the HTML bytes when the page has to be rendered (None otherwise)."""
    url = r.get("url") or r.get("final_url") or r.get("path") or ""
    doc_id = records.stable_id(url)
    row = {"doc_id": doc_id, "url": url, "final_url": r.get("final_url") or url, "title": "",
           "html_sha256": "", "pdf_path": None, "pdf_sha256": None, "pages": 0, "chars": 0,
           "status": "ok", "error": None, "root": None, "params_hash": run.phash}
    if doc_id in run.seen:
        row.update(status="rejected", error="duplicate_url")
        return row, None
    run.seen.add(doc_id)
    src = run.base / str(r.get("path") or "")
    if not r.get("path") or not src.is_file():
        row.update(status="rejected", error="missing_html")
        return row, None
    data = src.read_bytes()
    row["html_sha256"] = records.sha256_bytes(data)
    prev = run.old.get(doc_id)
    if (prev and prev.get("html_sha256") == row["html_sha256"] and prev.get("params_hash") == run.phash
            and prev.get("url") == url and _prev_valid(prev, run.base)):
        run.stats["reused"] += 1
        return prev, None
    run.stats["rerendered"] += 1
    return row, data


def render_one(job: tuple[bytes, str, RenderConfig, Fonts]) -> dict:
    """One page, start to end (runs in a worker): main content, PDF, the PDF's own text count.
    Returns the manifest fields plus ``pdf`` (bytes) when there is a PDF."""
    data, url, cfg, fonts = job
    t0 = time.monotonic()
    try:
        content = extract_main(data, url, cfg)
    except TooComplex as e:
        return {"status": "rejected", "error": "too_complex", "detail": str(e)}
    fields = {"title": content.title, "chars": content.chars, "root": content.root,
              "visible_chars": content.visible_chars, "chrome_chars": content.chrome_chars,
              "main_chars": content.main_chars, "outside_chars": content.outside_chars,
              "sections_found": content.sections_found, "sections_kept": content.sections_kept,
              "title_source": content.title_source}
    if content.chars < cfg.min_chars:
        return {**fields, "status": "rejected", "error": "empty_content"}
    budget = cfg.max_seconds - (time.monotonic() - t0)
    try:
        pdf, pages = render_pdf(content, url, cfg, fonts, deadline=time.monotonic() + budget)
    except TooLong as e:
        return {**fields, "status": "rejected", "error": e.reason, "detail": str(e)}
    pdf_chars = pdf_body_chars(pdf, content.title, url)
    retention = round(min(1.0, pdf_chars / content.main_chars), 4) if content.main_chars else 1.0
    return {**fields, "pdf": pdf, "pages": pages, "pdf_chars": pdf_chars, "retention": retention,
            "status": "ok"}


def pdf_body_chars(pdf: bytes, title: str, url: str) -> int:
    """Non-space characters of the PDF's text, less the title and "Source:" header of page 1."""
    with pymupdf.open("pdf", pdf) as doc:
        n = sum(nonspace_chars(page.get_text()) for page in doc)
    return max(0, n - nonspace_chars(title) - nonspace_chars(f"Source: {url}"))


def _finish(run: _Pass, row: dict, outcome: Outcome) -> dict:
    """The manifest row of a rendered page from its worker's outcome; writes the PDF."""
    cfg, base, log = run.cfg, run.base, run.log
    pdf_rel = f"{run.pdf_dir}/{row['doc_id']}.pdf"
    url = row["url"]
    if outcome.timed_out:
        log.warning("%s: over render.max_seconds=%s, rejected as too_slow", url, cfg.max_seconds)
        res = {"status": "rejected", "error": "too_slow"}
    elif outcome.error:
        log.warning("%s: unparseable HTML (%s)", url, outcome.error.splitlines()[0])
        res = {"status": "rejected", "error": "unparseable"}
    else:
        res = dict(outcome.value)
    pdf = res.pop("pdf", None)
    detail = res.pop("detail", None)
    if detail:
        log.warning("%s: %s (%s)", url, res["error"], detail)
    row.update(res)
    if pdf is not None and row.get("retention", 1.0) < cfg.min_retention:
        log.warning("%s: low_retention: the PDF holds %.0f%% of the page's main text (%d of %d characters; "
                    "render.min_retention=%s)", url, 100 * row["retention"], row["pdf_chars"],
                    row["main_chars"], cfg.min_retention)
        if cfg.reject_low_retention:
            row.update(status="rejected", error="low_retention")
            pdf = None
        else:
            row["status"] = "low_retention"
    if pdf is None:
        (base / pdf_rel).unlink(missing_ok=True)
        return row
    records.atomic_write_bytes(base / pdf_rel, pdf)
    row.update(pdf_path=pdf_rel, pdf_sha256=records.sha256_bytes(pdf))
    return row


def _remove_stale(out_dir: Path, rows_out: list[dict], stats: dict) -> None:
    """Delete PDFs (and leftover temp files) in ``out_dir`` that no ok row names."""
    keep = {f"{r['doc_id']}.pdf" for r in rows_out if r["status"] in PDF_STATUSES}
    for p in sorted(out_dir.iterdir()):
        if p.name == "manifest.jsonl" or p.name in keep:
            continue
        if p.is_file() and (p.suffix == ".pdf" or p.name.endswith(".tmp")):
            p.unlink()
            stats["removed"] += p.suffix == ".pdf"


def _prev_valid(prev: dict, base: Path) -> bool:
    if prev.get("status") not in PDF_STATUSES:
        return prev.get("status") == "rejected" and bool(prev.get("error"))
    p = base / str(prev.get("pdf_path") or "")
    return p.is_file() and records.sha256_file(p) == prev.get("pdf_sha256")
