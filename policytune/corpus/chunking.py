"""Chunks: heading-aware text chunks under a token budget, from the page text of rendered PDFs.

Headings. A block is a heading when its text is mostly set larger than the document's body size
(char-weighted mode of span sizes) and bold -- the renderer sets h1..h6 in bold at 1.06..1.8x
the body size (CJK glyphs count by size alone: the CJK face has no bold). Heading levels
are the distinct heading sizes, largest first. The page title and "Source: <url>" header the
renderer puts on page 1 are not chunked (they are the record's ``title`` and ``url``).

Chunks. A heading starts a new section; consecutive headings stay together with the text that
follows them. A section is cut into chunks of at most ``max_tokens`` tokens (see
:mod:`policytune.corpus.tokens`), preferring paragraph ends, then sentence ends, and only at
whitespace (never inside a word); the next chunk of the same section starts ``overlap_tokens``
earlier (moved to a sentence start when one is there). Chunks never cross a page (their span is
on one page) nor a heading. Each chunk carries its heading path ("1. Booking > 1.2 Flights",
the page title left out).

Identical chunk texts (whitespace- and case-insensitive) are kept once, first in url order, and
counted. chunk_id = stable_id(doc_id, text).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import polars as pl

from policytune.core import records
from policytune.core.params import NonNegInt, ParamsError, PositiveFloat, PositiveInt, Range
from policytune.core.progress import Progress, get_logger
from policytune.corpus.pdftext import Block, PageText, read_pdf
from policytune.corpus.tokens import CJK_TOKEN_CHAR, tokenize


@dataclass
class ExtractConfig:
    max_tokens: Annotated[int, Range(ge=8)] = field(default=180, metadata={"help": "most tokens in one chunk (regex word/punctuation "
                                                           "tokens, see the module docstring)"})
    overlap_tokens: NonNegInt = field(default=30, metadata={"help": "tokens a chunk repeats from the end of the "
                                                              "previous chunk of the same section"})
    min_chars: NonNegInt = field(default=20, metadata={"help": "chunks with fewer non-space characters are dropped "
                                                         "(counted as short_dropped)"})
    heading_size_ratio: PositiveFloat = field(default=1.04, metadata={"help": "a block is a heading when set at least this "
                                                                      "many times the body font size (and bold)"})
    max_heading_chars: PositiveInt = field(default=200, metadata={"help": "longer blocks are never headings"})

    def __post_init__(self) -> None:
        if self.max_tokens < 8:
            raise ParamsError("extract.max_tokens must be at least 8")
        if not 0 <= self.overlap_tokens <= self.max_tokens // 2:
            raise ParamsError("extract.overlap_tokens must be between 0 and max_tokens / 2")



_SENT_END = re.compile(r"[.!?;:。！？；]$|^[.!?。！？]")
_WS = re.compile(r"\s+")


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
        sections, path = _page_sections(p, blocks, path, title, counts)
        for heading, sec in sections:
            rows.extend(_section_chunks(doc, title, p, heading, sec, toks, starts, cfg, counts))
    return rows, counts


def _page_sections(p: PageText, blocks: list[Block], path: list[tuple[int, str]], title: str,
                   counts: Counter) -> tuple[list[tuple[str, list[Block]]], list[tuple[int, str]]]:
    """Sections on this page: (heading path, [blocks]); heading runs stay with their text.
    Returns them and the heading stack as it stands after the page."""
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
    return sections, path


def _section_chunks(doc: dict, title: str, p: PageText, heading: str, sec: list[Block],
                    toks: list[tuple[int, int]], starts: list[int], cfg: ExtractConfig,
                    counts: Counter) -> list[dict]:
    """The chunk records of one section on one page (too-short chunks counted, not kept)."""
    rows: list[dict] = []
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
    return rows


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
        return bool(CJK_TOKEN_CHAR.match(text[cur_start]) or CJK_TOKEN_CHAR.match(text[prev_end - 1]))

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
    docs = sorted((d for d in docs if d.get("status") in ("ok", "low_retention") and d.get("pdf_path")),
                  key=lambda d: (d["url"], d["doc_id"]))
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

