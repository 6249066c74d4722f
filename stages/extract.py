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
"""

from __future__ import annotations

import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pymupdf

from policytune.core import records
from policytune.core.params import ParamsError, load_section
from policytune.core.progress import Progress, get_logger

PDF_MANIFEST = "data/pdf/manifest.jsonl"
CHUNKS = "data/chunks.jsonl"
STATS = "data/stats/extract.json"


@dataclass
class ExtractConfig:
    max_tokens: int = field(default=180, metadata={"help": "most tokens in one chunk (regex word/punctuation "
                                                           "tokens, see the module docstring)"})
    overlap_tokens: int = field(default=30, metadata={"help": "tokens a chunk repeats from the end of the "
                                                              "previous chunk of the same section"})
    min_chars: int = field(default=20, metadata={"help": "chunks with fewer non-space characters are dropped "
                                                         "(counted as short_dropped)"})
    heading_size_ratio: float = field(default=1.04, metadata={"help": "a block is a heading when set at least this "
                                                                      "many times the body font size (and bold)"})
    max_heading_chars: int = field(default=200, metadata={"help": "longer blocks are never headings"})

    def __post_init__(self) -> None:
        if self.max_tokens < 8:
            raise ParamsError("extract.max_tokens must be at least 8")
        if not 0 <= self.overlap_tokens <= self.max_tokens // 2:
            raise ParamsError("extract.overlap_tokens must be between 0 and max_tokens / 2")


# --------------------------------------------------------------------------------------------
# Tokens
# --------------------------------------------------------------------------------------------

CJK = ("\u1100-\u11ff\u2e80-\u2fdf\u3000-\u303f\u3040-\u30ff\u3100-\u312f\u3130-\u318f"
       "\u3190-\u31ff\u3200-\u33ff\u3400-\u4dbf\u4e00-\u9fff\ua960-\ua97f\uac00-\ud7ff"
       "\uf900-\ufaff\ufe30-\ufe4f\uff00-\uffef\U00020000-\U0003134f")
_W = rf"[^\W{CJK}]"                      # a word character that is not CJK
TOKEN = re.compile(rf"{_W}+(?:['’\-.,]{_W}+)*|[{CJK}]|[^\s]", re.UNICODE)
_CJK_CHAR = re.compile(f"[{CJK}]")
_SENT_END = re.compile(r"[.!?;:。！？；]$|^[.!?。！？]")
_WS = re.compile(r"\s+")


def tokenize(text: str) -> list[tuple[int, int]]:
    """Token spans (start, end) of ``text``."""
    return [m.span() for m in TOKEN.finditer(text)]


def count_tokens(text: str) -> int:
    return sum(1 for _ in TOKEN.finditer(text))


# --------------------------------------------------------------------------------------------
# Page text with block spans
# --------------------------------------------------------------------------------------------

TEXT_FLAGS = pymupdf.TEXT_PRESERVE_WHITESPACE | pymupdf.TEXT_MEDIABOX_CLIP  # no ligatures kept


@dataclass
class Block:
    start: int
    end: int
    size: float          # char-weighted font size of the block
    bold: float          # fraction of its non-CJK characters set bold
    lines: int
    heading_level: int = 0


def _span_bold(span: dict) -> bool:
    return bool(span["flags"] & pymupdf.TEXT_FONT_BOLD) or "bold" in span.get("font", "").lower()


def page_text(page: pymupdf.Page) -> tuple[str, list[Block]]:
    """The page's text (the string chunk spans index into) and its blocks' spans in it."""
    data = page.get_text("dict", flags=TEXT_FLAGS, sort=False)
    raw: list[dict] = []
    for b in data["blocks"]:
        if b.get("type") != 0:
            continue
        cur = {"text": "", "bbox": b["bbox"], "size_w": 0.0, "nchars": 0, "bold_n": 0, "latin_n": 0, "lines": 0,
               "row_top": b["bbox"][1], "cell": b["bbox"], "is_row": False}
        prev_bbox = None
        for line in b["lines"]:
            spans = line["spans"]
            ltext = _WS.sub(" ", "".join(s["text"] for s in spans)).strip()
            if not ltext:
                continue
            for s in spans:
                n = len(s["text"].strip())
                cur["size_w"] += s["size"] * n
                cur["nchars"] += n
                non_cjk = len(_CJK_CHAR.sub("", s["text"]).strip())
                cur["latin_n"] += non_cjk
                cur["bold_n"] += non_cjk if _span_bold(s) else 0
            bbox = line["bbox"]
            if cur["text"]:
                sep = _line_sep(cur["text"], ltext, prev_bbox, bbox)
                cur["is_row"] |= sep == " | "
                cur["text"] += sep
            cur["text"] += ltext
            cur["cell"] = bbox
            prev_bbox = bbox
            cur["lines"] += 1
        if cur["text"]:
            raw.append(cur)
    # MuPDF makes the cells of some table rows (wrapped or <br>-split cells) blocks of their
    # own. A block whose top lines up with the row's, right of its last cell, is the next cell;
    # one flush under the last cell continues that cell -- when the row already has two cells or
    # the block after it is the row's next cell.
    merged: list[dict] = []
    for i, cur in enumerate(raw):
        prev = merged[-1] if merged else None
        sep = None
        if prev:
            cell, bb = prev["cell"], cur["bbox"]
            if _next_cell(prev, bb):
                sep = " | "
                prev["cell"] = bb
            elif bb[0] < cell[2] and bb[2] > cell[0] and 0 <= bb[1] - cell[3] < 3 and (
                    prev["is_row"] or (i + 1 < len(raw) and _next_cell(prev, raw[i + 1]["bbox"], bb))):
                sep = _join(prev["text"], cur["text"])
                prev["cell"] = (min(cell[0], bb[0]), cell[1], max(cell[2], bb[2]), bb[3])
        if sep is not None:
            prev["text"] += sep + cur["text"]
            prev["is_row"] |= sep == " | "
            for k in ("size_w", "nchars", "bold_n", "latin_n", "lines"):
                prev[k] += cur[k]
            continue
        merged.append(cur)
    parts: list[str] = []
    blocks: list[Block] = []
    pos = 0
    for m in merged:
        if parts:
            parts.append("\n")
            pos += 1
        parts.append(m["text"])
        blocks.append(Block(pos, pos + len(m["text"]), m["size_w"] / max(m["nchars"], 1),
                            m["bold_n"] / m["latin_n"] if m["latin_n"] else 1.0, m["lines"]))
        pos += len(m["text"])
    return "".join(parts), blocks


def _next_cell(row: dict, bb, after=None) -> bool:
    """Is a block at ``bb`` the next cell of ``row`` (top aligned, right of its last cell)?"""
    right_of = max(row["cell"][2], after[2] if after is not None else 0)
    return abs(row["row_top"] - bb[1]) < 2 and bb[0] >= right_of - 0.5


def _line_sep(before: str, after: str, prev_bbox, bbox) -> str:
    # A line that starts right of where the previous one ended is the next table cell.
    if prev_bbox is not None and bbox[0] >= prev_bbox[2] - 0.5:
        return " | "
    return _join(before, after)


def _join(before: str, after: str) -> str:
    """Separator between a line and the wrapped line after it."""
    if _CJK_CHAR.match(after[0]) or _CJK_CHAR.match(before[-1]):
        return ""
    if before.endswith("-") and after[0].isalpha():
        return ""
    return " "


# --------------------------------------------------------------------------------------------
# Chunking (pure: pages of text in, chunk records out)
# --------------------------------------------------------------------------------------------

@dataclass
class PageText:
    page: int            # 1-based
    text: str
    blocks: list[Block]


def read_pdf(path: str | Path) -> list[PageText]:
    with pymupdf.open(path) as doc:
        out = []
        for i, page in enumerate(doc):
            text, blocks = page_text(page)
            out.append(PageText(i + 1, text, blocks))
        return out


def _norm(s: str) -> str:
    return _WS.sub(" ", s).strip().casefold()


def mark_headings(pages: list[PageText], cfg: ExtractConfig) -> float:
    """Set ``heading_level`` on heading blocks; returns the body font size."""
    sizes: Counter = Counter()
    for p in pages:
        for b in p.blocks:
            sizes[round(b.size, 1)] += b.end - b.start
    if not sizes:
        return 0.0
    body = sizes.most_common(1)[0][0]
    heads = []
    for p in pages:
        for b in p.blocks:
            if (b.size >= body * cfg.heading_size_ratio and b.bold >= 0.8
                    and b.end - b.start <= cfg.max_heading_chars and b.lines <= 4):
                heads.append(b)
    levels = sorted({round(b.size * 2) / 2 for b in heads}, reverse=True)
    for b in heads:
        b.heading_level = levels.index(round(b.size * 2) / 2) + 1
    return body


def _header_blocks(first: PageText, url: str) -> int:
    """How many leading blocks of page 1 are the renderer's title + "Source: <url>" header."""
    want = re.sub(r"\s+", "", f"Source: {url}")
    for i, b in enumerate(first.blocks[:4]):
        if re.sub(r"\s+", "", first.text[b.start:b.end]) == want:
            return i + 1
    return 0


def chunk_document(doc: dict, pages: list[PageText], cfg: ExtractConfig) -> tuple[list[dict], Counter]:
    """Chunk one document. ``doc`` carries doc_id, url, title, pdf_path."""
    counts: Counter = Counter()
    mark_headings(pages, cfg)
    title = doc.get("title") or ""
    skip = _header_blocks(pages[0], doc.get("url", "")) if pages else 0
    path: list[tuple[int, str]] = []       # heading stack: (level, text)
    rows: list[dict] = []
    for p in pages:
        blocks = p.blocks[skip:] if p.page == 1 else p.blocks
        if not blocks:
            continue
        toks = tokenize(p.text)
        starts = [t[0] for t in toks]
        # Sections on this page: (heading path, [blocks]); heading runs stay with their text.
        sections: list[tuple[str, list[Block]]] = []
        cur: list[Block] = []
        cur_has_body = False
        cur_path = list(path)
        for b in blocks:
            if b.heading_level:
                if cur and cur_has_body:
                    sections.append((_path_str(cur_path, title), cur))
                    cur, cur_has_body = [], False
                htxt = _WS.sub(" ", p.text[b.start:b.end]).strip()
                path = [(lv, t) for lv, t in path if lv < b.heading_level] + [(b.heading_level, htxt)]
                cur.append(b)
            else:
                cur.append(b)
                cur_has_body = True
            cur_path = list(path)
        if cur:
            if cur_has_body:
                sections.append((_path_str(cur_path, title), cur))
            else:
                counts["heading_only_dropped"] += 1
        for heading, sec in sections:
            for a, z in _cut(sec, toks, starts, p.text, cfg):
                cs, ce = toks[a][0], toks[z - 1][1]
                text = p.text[cs:ce]
                if sum(1 for c in text if not c.isspace()) < cfg.min_chars:
                    counts["short_dropped"] += 1
                    continue
                rows.append({
                    "chunk_id": records.stable_id(doc["doc_id"], text),
                    "doc_id": doc["doc_id"], "url": doc["url"], "title": title,
                    "pdf_path": doc["pdf_path"], "page": p.page, "char_start": cs, "char_end": ce,
                    "text": text, "n_tokens": z - a, "heading": heading,
                })
    return rows, counts


def _path_str(path: list[tuple[int, str]], title: str) -> str:
    t = _norm(title)
    names = [h for _, h in path if not (t and t.startswith(_norm(h)))]   # the page title itself
    out: list[str] = []
    for h in names:
        if not out or _norm(out[-1]) != _norm(h):
            out.append(h)
    return " > ".join(out)


def _cut(sec: list[Block], toks: list[tuple[int, int]], starts: list[int], text: str,
         cfg: ExtractConfig) -> list[tuple[int, int]]:
    """Token ranges [a, z) of the chunks of one section on one page."""
    import bisect

    lo = bisect.bisect_left(starts, sec[0].start)
    hi = bisect.bisect_left(starts, sec[-1].end)
    if hi <= lo:
        return []
    block_ends = sorted({bisect.bisect_left(starts, b.end) for b in sec})

    def breakable(i: int) -> bool:
        """May a chunk start at token i / end before it (whitespace or CJK between)?"""
        if i <= lo or i >= hi:
            return True
        prev_end, cur_start = toks[i - 1][1], toks[i][0]
        if prev_end < cur_start:
            return True
        return bool(_CJK_CHAR.match(text[cur_start]) or _CJK_CHAR.match(text[prev_end - 1]))

    def sent_end(i: int) -> bool:     # token i-1 ends a sentence
        return i > lo and bool(_SENT_END.search(text[toks[i - 1][0]:toks[i - 1][1]]))

    out: list[tuple[int, int]] = []
    a = lo
    while a < hi:
        limit = a + cfg.max_tokens
        if limit >= hi:
            z = hi
        else:
            half = a + max(1, cfg.max_tokens // 2)
            z = next((e for e in reversed(block_ends) if half <= e <= limit), 0)
            if not z:
                z = next((e for e in range(limit, half - 1, -1) if sent_end(e) and breakable(e)), 0)
            if not z:
                z = next((e for e in range(limit, a, -1) if breakable(e)), 0)
            if not z:                 # one "word" longer than the budget: cut after it
                z = next((e for e in range(limit + 1, hi) if breakable(e)), hi)
        out.append((a, z))
        if z >= hi:
            break
        nxt = z - cfg.overlap_tokens if cfg.overlap_tokens else z
        nxt = max(nxt, a + 1)
        # Start the overlap at a sentence start when there is one in the window.
        sent = next((i for i in range(nxt, z) if sent_end(i) and breakable(i)), None)
        if sent is not None and sent < z:
            nxt = sent
        else:
            while nxt > a + 1 and not breakable(nxt):
                nxt -= 1
            if not breakable(nxt):
                nxt = z
        a = nxt
    return out


def dedupe(rows: list[dict]) -> tuple[list[dict], int]:
    seen: set[str] = set()
    out = []
    for r in rows:
        key = _norm(r["text"])
        if key in seen:
            continue
        seen.add(key)
        out.append(r)
    return out, len(rows) - len(out)


def extract_all(docs: list[dict], base: Path, cfg: ExtractConfig, log=None) -> tuple[list[dict], dict]:
    """Chunk every ok document of the render manifest; returns (chunks, stats)."""
    log = log or get_logger("extract")
    docs = sorted((d for d in docs if d.get("status") == "ok"), key=lambda d: (d["url"], d["doc_id"]))
    counts: Counter = Counter()
    rows: list[dict] = []
    pages_per_doc: dict[str, int] = {}
    prog = Progress(log, "docs", len(docs))
    for d in docs:
        path = base / d["pdf_path"]
        if not path.is_file():
            raise FileNotFoundError(f"{path} is listed in the render manifest but missing: rerun `dvc repro render`")
        pages = read_pdf(path)
        pages_per_doc[d["doc_id"]] = len(pages)
        doc_rows, c = chunk_document(d, pages, cfg)
        counts.update(c)
        rows.extend(doc_rows)
        prog.update(note=d["url"][-60:])
    rows, dups = dedupe(rows)
    return rows, summarize(rows, pages_per_doc, dups, counts)


def summarize(rows: list[dict], pages_per_doc: dict[str, int], dups: int, counts: Counter) -> dict:
    docs = pl.DataFrame({"doc_id": list(pages_per_doc), "pages": list(pages_per_doc.values())},
                        schema={"doc_id": pl.String, "pages": pl.Int64})
    chunks = pl.DataFrame(
        {"doc_id": [r["doc_id"] for r in rows], "chars": [len(r["text"]) for r in rows],
         "tokens": [r["n_tokens"] for r in rows]},
        schema={"doc_id": pl.String, "chars": pl.Int64, "tokens": pl.Int64})
    per_doc = (docs.join(chunks.group_by("doc_id").agg(pl.len().alias("chunks")), on="doc_id", how="left")
               .with_columns(pl.col("chunks").fill_null(0)))
    n = per_doc.height
    return {
        "docs": n,
        "pdf_pages": int(docs["pages"].sum()) if n else 0,
        "chunks": chunks.height,
        "characters": int(chunks["chars"].sum()) if chunks.height else 0,
        "tokens": int(chunks["tokens"].sum()) if chunks.height else 0,
        "tokens_per_chunk_max": int(chunks["tokens"].max()) if chunks.height else 0,
        "chunks_per_doc_min": int(per_doc["chunks"].min()) if n else 0,
        "chunks_per_doc_max": int(per_doc["chunks"].max()) if n else 0,
        "chunks_per_doc_mean": round(float(per_doc["chunks"].mean()), 3) if n else 0.0,
        "docs_without_chunks": int((per_doc["chunks"] == 0).sum()) if n else 0,
        "duplicates_dropped": dups,
        "short_dropped": counts.get("short_dropped", 0),
        "heading_only_dropped": counts.get("heading_only_dropped", 0),
    }


def main() -> int:
    log = get_logger("extract")
    cfg = load_section(ExtractConfig, "extract")
    t0 = time.monotonic()
    docs = records.read_jsonl(PDF_MANIFEST)
    rows, stats = extract_all(docs, Path("."), cfg, log)
    records.write_jsonl(CHUNKS, rows)
    records.write_json(STATS, stats)   # counts only: wall time would make `dvc metrics diff` noisy
    log.info("%d docs, %d PDF pages -> %d chunks (%d tokens; %d duplicates, %d short dropped) in %.1fs",
             stats["docs"], stats["pdf_pages"], stats["chunks"], stats["tokens"],
             stats["duplicates_dropped"], stats["short_dropped"], time.monotonic() - t0)
    if stats["docs_without_chunks"]:
        log.warning("%d documents produced no chunk", stats["docs_without_chunks"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
