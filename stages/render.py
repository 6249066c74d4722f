"""render: scraped HTML pages -> one clean PDF per page, with what each page kept counted.

Reads   data/raw/manifest.jsonl (+ the UTF-8 pages it lists), params.yaml `render`
Writes  data/pdf/<doc_id>.pdf         one PDF per page that has main content
        data/pdf/manifest.jsonl       {doc_id, url, title, title_source, html_sha256, pdf_path, pdf_sha256,
                                       pages, chars, status, error, root, visible_chars, chrome_chars,
                                       main_chars, outside_chars, pdf_chars, retention, sections_found,
                                       sections_kept, params_hash}
        data/stats/render.json        {pages_in, pdfs, rerendered, reused, removed, rejected_by_reason,
                                       pdf_pages, low_retention, retention{...}, sections{...},
                                       titles_by_source, low_retention_pages}

Pipeline per page (policytune/corpus/render.py runs it in a forked worker, killed after
``max_seconds``: a hostile page is a counted ``too_slow``, never a hang; pages with more than
``max_elements`` start tags are ``too_complex`` before parsing):
1. ``extract_main`` (pure, policytune/corpus/html.py): junk and hidden elements go (what is left
   is the page's visible text); then chrome -- nav, header, footer, aside, banners, small forms,
   blocks that are mostly link text (CJK menus too) -- (visible minus chrome is the main text). A
   landmark (main, role=main, #content, or an <article> holding most of the text) is the root;
   blocks beside it that look like document sections (annexes, schedules) stay; without a
   landmark the whole body minus chrome is kept. A form that wraps the page is kept. Legal
   headings set as classed <p> (Article 12, CHAPTER III, ANNEX III, 第一条, Art. 5º) become
   headings, point tables become indented paragraphs, and the title falls back from a file-name /
   code / site-name <title> to og:title, <h1> or the document's title line. The content is rebuilt
   as small, safe XHTML from a whitelist of tags.
2. ``render_pdf`` (pure, pdf.py): pymupdf.Story + DocumentWriter lay the XHTML out on A4 with the
   page title and source URL on the first page. DejaVu fonts (accented Latin, Greek, Cyrillic) and
   Noto CJK are registered through a pymupdf.Archive + @font-face; the CJK face is cut down with
   fontTools to the glyphs the page uses. Unbreakable runs get zero-width spaces (layout stays
   linear). Fonts are subset and the PDF saved without dates or ids: same HTML, same bytes.
3. Retention: the PDF's own text is counted against the main text; a page below
   ``min_retention`` is ``low_retention`` (PDF kept and chunked, or rejected with
   ``reject_low_retention``) -- counted in data/stats/render.json and shown in the report.
4. Incremental (data/pdf is a DVC ``persist`` output): a page is re-rendered only when its HTML
   sha256 or the params hash (render params + the source of every project module this stage
   imports + PyMuPDF version + fonts) changed; PDFs of pages no longer in the scrape manifest
   are deleted. Every rejection is counted by reason, never a crash.

Mechanisms: policytune/corpus/html.py (1), pdf.py (2), render.py (3, 4), core/isolate.py (workers).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from policytune.core import records
from policytune.core.params import load_section
from policytune.core.progress import get_logger
from policytune.core.stage import stage_parser
from policytune.corpus.html import RenderConfig
from policytune.corpus.render import render_pages

PATHS = {"input": "data/raw/manifest.jsonl", "out": "data/pdf", "stats": "data/stats/render.json"}


def main(argv: list[str] | None = None) -> int:
    args = stage_parser(__doc__, "render", PATHS, RenderConfig).parse_args(argv)
    log = get_logger("render")
    cfg = load_section(RenderConfig, "render", args.params)
    t0 = time.monotonic()
    raw = records.read_jsonl(args.input)
    manifest = Path(args.out) / "manifest.jsonl"
    old = records.read_jsonl(manifest) if manifest.exists() else []
    rows, stats = render_pages(raw, Path("."), args.out, cfg, old, log=log)
    records.write_jsonl(manifest, rows)
    records.write_json(args.stats, stats)   # counts only: wall time would make `dvc metrics diff` noisy
    log.info("%d pages in -> %d PDFs (%d PDF pages): %d rendered, %d reused, %d removed, rejected %s in %.1fs",
             stats["pages_in"], stats["pdfs"], stats["pdf_pages"], stats["rerendered"], stats["reused"],
             stats["removed"], stats["rejected_by_reason"] or "none", time.monotonic() - t0)
    if stats["pages_in"] and not stats["pdfs"]:
        log.error("no page produced a PDF")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
