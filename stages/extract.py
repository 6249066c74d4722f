"""extract: PDFs -> heading-aware text chunks under a token budget.

Reads   data/pdf/manifest.jsonl (+ the PDFs it lists), params.yaml `extract`
Writes  data/chunks.jsonl         one row a chunk: chunk_id, doc_id, url, title, pdf_path, page,
                                  char_start, char_end, text, n_tokens, heading
        data/stats/extract.json   {docs, pdf_pages, chunks, characters, tokens,
                                   chunks_per_doc_{min,max,mean}, duplicates_dropped, ...}

Page text. ``page_text(page)`` rebuilds each PDF page's text from PyMuPDF's "dict" output:
lines of a block are joined by a space (nothing between CJK characters or after a line-final
hyphen, " | " between table cells side by side), blocks by a newline, runs of whitespace
collapsed, ligatures expanded. ``char_start``/``char_end`` index into exactly that string, so
``page_text(page)[0][char_start:char_end] == text`` for every chunk.

Headings. A block is a heading when its text is mostly set larger than the document's body size
(char-weighted mode of span sizes) and bold -- the renderer sets h1..h6 in bold at 1.06..1.8x
the body size (CJK glyphs count by size alone: the CJK face has no bold). Heading levels
are the distinct heading sizes, largest first. The page title and "Source: <url>" header the
renderer puts on page 1 are not chunked (they are the record's ``title`` and ``url``).

Chunks. A heading starts a new section; consecutive headings stay together with the text that
follows them. A section is cut into chunks of at most ``max_tokens`` tokens, preferring paragraph
ends, then sentence ends, and only at whitespace (never inside a word); the next chunk of the
same section starts ``overlap_tokens`` earlier (moved to a sentence start when one is there).
Chunks never cross a page (their span is on one page) nor a heading. Each chunk carries its
heading path ("1. Booking > 1.2 Flights", the page title left out).

Tokens are approximated by a regex: a run of letters/digits (with inner ' - . , joining
"don't", "e-mail", "3.5", "1,000"), one CJK character, or one other symbol. On English policy
text this is within ~25% of a BPE tokenizer's count (BPE splits rarer words into more pieces),
with no model or vocabulary to load -- good enough for a budget that only has to keep chunks
well inside the teacher's prompt.

Identical chunk texts (whitespace- and case-insensitive) are kept once, first in url order, and
counted. chunk_id = stable_id(doc_id, text).

Mechanisms: policytune/corpus/pdftext.py (page text), tokens.py, chunking.py.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from policytune.core import records
from policytune.core.params import load_section
from policytune.core.progress import get_logger
from policytune.core.stage import stage_parser
from policytune.corpus.chunking import ExtractConfig, extract_all

PATHS = {"input": "data/pdf/manifest.jsonl", "out": "data/chunks.jsonl", "stats": "data/stats/extract.json"}


def main(argv: list[str] | None = None) -> int:
    args = stage_parser(__doc__, "extract", PATHS, ExtractConfig).parse_args(argv)
    log = get_logger("extract")
    cfg = load_section(ExtractConfig, "extract", args.params)
    t0 = time.monotonic()
    docs = records.read_jsonl(args.input)
    rows, stats = extract_all(docs, Path("."), cfg, log)
    records.write_jsonl(args.out, rows)
    records.write_json(args.stats, stats)   # counts only: wall time would make `dvc metrics diff` noisy
    log.info("%d docs, %d PDF pages -> %d chunks (%d tokens; %d duplicates, %d short dropped) in %.1fs",
             stats["docs"], stats["pdf_pages"], stats["chunks"], stats["tokens"],
             stats["duplicates_dropped"], stats["short_dropped"], time.monotonic() - t0)
    if stats["docs_without_chunks"]:
        log.warning("%d documents produced no chunk", stats["docs_without_chunks"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
