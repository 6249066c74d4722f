"""render: scraped HTML pages -> one clean PDF per page.

Reads   data/raw/manifest.jsonl (+ the UTF-8 pages it lists), params.yaml `render`
Writes  data/pdf/<doc_id>.pdf         one PDF per page that has main content
        data/pdf/manifest.jsonl       {doc_id, url, title, html_sha256, pdf_path, pdf_sha256,
                                       pages, chars, status, error, root, params_hash}
        data/stats/render.json        {pages_in, pdfs, rerendered, reused, removed,
                                       rejected_by_reason, pdf_pages, ...}

Pipeline per page:
1. ``extract_main`` (pure): BeautifulSoup keeps the page's main content -- <main>,
   [role=main], a single <article>, #content, or else the block holding most of the text -- and
   drops the chrome around it (nav, header, footer, aside, scripts, styles, forms, iframes,
   svg, hidden elements, cookie/consent banners). It rebuilds that content as small, safe XHTML
   from a whitelist of tags (headings, paragraphs, lists, tables, blockquote, pre, inline
   emphasis); links keep their text, every attribute except colspan/rowspan is dropped.
2. ``render_pdf`` (pure): pymupdf.Story + DocumentWriter lay the XHTML out on A4 with the page
   title and source URL on the first page. DejaVu fonts (accented Latin, Greek, Cyrillic) and
   Noto CJK are registered through a pymupdf.Archive + @font-face; CJK runs are wrapped in
   ``<span class="cjk">`` and the CJK face is cut down with fontTools to the glyphs the page uses
   (MuPDF cannot subset CFF fonts; a whole Noto CJK face is 16 MB). Fonts are then subset and the
   PDF saved without dates or random ids, so the same HTML always gives the same bytes.
3. Incremental (data/pdf is a DVC ``persist`` output): a page is re-rendered only when its HTML
   sha256 or the params hash (render params + the source of every project module this stage
   imports + PyMuPDF version + fonts) changed; PDFs of pages no longer in the scrape manifest
   are deleted. Pages with no main text are counted rejections (``empty_content``), never
   crashes.

Mechanisms: policytune/corpus/html.py (1), pdf.py (2), render.py (3).
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
