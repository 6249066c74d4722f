"""Page text with block spans, rebuilt from PyMuPDF's "dict" output of a rendered PDF.

Lines of a block are joined by a space (nothing between CJK characters or after a line-final
hyphen, " | " between table cells side by side), blocks by a newline, runs of whitespace
collapsed, ligatures expanded. Chunk spans (``char_start``/``char_end``) index into exactly that
string, so ``page_text(page)[0][char_start:char_end] == text`` for every chunk.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pymupdf

from policytune.corpus.tokens import CJK_TOKEN_CHAR

TEXT_FLAGS = pymupdf.TEXT_PRESERVE_WHITESPACE | pymupdf.TEXT_MEDIABOX_CLIP  # no ligatures kept
_WS = re.compile(r"\s+")


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
        cur = _read_block(b)
        if cur["text"]:
            raw.append(cur)
    return _assemble(_merge_split_cells(raw))


def _read_block(b: dict) -> dict:
    """One text block of the "dict" output: its joined lines and font-size/bold tallies."""
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
            non_cjk = len(CJK_TOKEN_CHAR.sub("", s["text"]).strip())
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
    return cur


def _merge_split_cells(raw: list[dict]) -> list[dict]:
    """MuPDF makes the cells of some table rows (wrapped or <br>-split cells) blocks of their
    own. A block whose top lines up with the row's, right of its last cell, is the next cell;
    one flush under the last cell continues that cell -- when the row already has two cells or
    the block after it is the row's next cell."""
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
    return merged


def _assemble(merged: list[dict]) -> tuple[str, list[Block]]:
    """The page string (blocks joined by newlines) and each block's span and font figures."""
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
    if CJK_TOKEN_CHAR.match(after[0]) or CJK_TOKEN_CHAR.match(before[-1]):
        return ""
    if before.endswith("-") and after[0].isalpha():
        return ""
    return " "


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
