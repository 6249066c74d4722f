"""Charset of fetched HTML bytes (BOM -> HTTP header -> <meta> -> UTF-8 -> charset-normalizer)
and the UTF-8 re-declaration of saved pages; the scraper's decoding of what it fetched."""

from __future__ import annotations

import codecs
import re
from typing import Mapping

_META_CHARSET = re.compile(rb"""<meta[^>]*?charset\s*=\s*["']?\s*([A-Za-z0-9_.:\-]+)""", re.I)
_XML_DECL = re.compile(rb"""^<\?xml[^>]*?encoding\s*=\s*["']([A-Za-z0-9_.:\-]+)["']""", re.I)
_BOMS = ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF32_LE, "utf-32-le"),
         (codecs.BOM_UTF32_BE, "utf-32-be"), (codecs.BOM_UTF16_LE, "utf-16-le"),
         (codecs.BOM_UTF16_BE, "utf-16-be"))


def _codec(label: str | None) -> str | None:
    """Python codec name for a declared charset label, with the browser (WHATWG) mapping
    of latin-1/ascii to windows-1252; None when the label is unknown."""
    if not label:
        return None
    try:
        name = codecs.lookup(label.strip().strip("\"'").lower()).name
    except (LookupError, ValueError):
        return None
    return "cp1252" if name in ("iso8859-1", "ascii") else name


def header_charset(headers: Mapping[str, str] | None) -> str | None:
    content_type = _header(headers, "content-type") or ""
    m = re.search(r"charset\s*=\s*[\"']?([^\s;\"']+)", content_type, re.I)
    return m.group(1) if m else None


def _header(headers: Mapping[str, str] | None, name: str) -> str | None:
    for key, value in (headers or {}).items():
        if key.lower() == name:
            return value
    return None


def _try(data: bytes, codec: str | None) -> str | None:
    if not codec:
        return None
    try:
        return data.decode(codec)
    except (UnicodeDecodeError, LookupError):
        return None


def meta_charset(data: bytes) -> str | None:
    """Codec declared by <meta charset>, <meta http-equiv content="...; charset=">, or an
    XML declaration in the first 16 KiB; None if absent or unknown."""
    head = data[:16384]
    m = _META_CHARSET.search(head) or _XML_DECL.search(head)
    codec = _codec(m.group(1).decode("ascii", "replace")) if m else None
    if codec and codec.startswith(("utf-16", "utf-32")):
        codec = "utf-8"  # a byte-oriented <meta> cannot really declare UTF-16 (WHATWG rule)
    return codec


def decode_html(data: bytes, headers: Mapping[str, str] | None = None) -> tuple[str, str]:
    """Decode an HTML body; returns (text, codec name) and never raises.

    Order: byte-order mark, then the HTTP ``Content-Type`` charset, then ``<meta charset>`` /
    ``<meta http-equiv>`` (or an XML declaration), then strict UTF-8, then charset-normalizer,
    then windows-1252 with replacement characters. The BOM comes first as in browsers: a
    BOM is proof, a header is a claim. A declared charset that does not decode cleanly falls
    through to the next step; 'latin-1' and 'ascii' labels mean windows-1252 (browsers do the
    same, and real pages labelled latin-1 use its curly quotes and euro sign).
    """
    text, codec, _ = decode_html_ex(data, headers)
    return text, codec


def decode_html_ex(data: bytes, headers: Mapping[str, str] | None = None) -> tuple[str, str, str]:
    """Like ``decode_html`` but also returns where the encoding came from."""
    for bom, codec in _BOMS:
        if data.startswith(bom):
            text = data[len(bom):].decode(codec, errors="replace")
            return text, codec, "bom"
    candidates = ((_codec(header_charset(headers)), "header"), (meta_charset(data), "meta"),
                  ("utf-8", "utf-8"))
    for codec, source in candidates:
        text = _try(data, codec)
        if text is not None:
            return text, codec, source
    try:
        from charset_normalizer import from_bytes

        best = from_bytes(data).best()
    except Exception:  # a detector failure must not lose the page
        best = None
    if best is not None and best.encoding:
        codec = _codec(best.encoding) or best.encoding
        text = _try(data, codec)
        if text is not None:
            return text, codec, "detected"
    return data.decode("cp1252", errors="replace"), "cp1252", "fallback"


_META_DECL = re.compile(r"""(<meta\b[^>]*?charset\s*=\s*["']?\s*)([A-Za-z0-9_.:\-]+)""", re.I)
_XML_DECL_TEXT = re.compile(r"""^(\s*<\?xml[^>]*?encoding\s*=\s*["'])([A-Za-z0-9_.:\-]+)""", re.I)


def as_utf8_html(text: str) -> str:
    """The page text with its charset declarations rewritten to utf-8 (the saved file is
    UTF-8; a stale windows-1252 <meta> would make the next stage decode it wrongly)."""
    text = _META_DECL.sub(lambda m: m.group(1) + "utf-8", text, count=3)
    return _XML_DECL_TEXT.sub(lambda m: m.group(1) + "utf-8", text, count=1)


def media_type(headers: Mapping[str, str] | None) -> str | None:
    value = _header(headers, "content-type")
    if not value:
        return None
    return value.split(";", 1)[0].strip().lower() or None
