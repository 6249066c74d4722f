"""Charset of fetched HTML bytes and the UTF-8 re-declaration of saved pages; the scraper's
decoding of what it fetched.

Order (as browsers do it): byte-order mark -> HTTP ``Content-Type`` charset -> ``<meta>`` /
XML declaration -> strict UTF-8 -> windows-1252, the WHATWG default for undeclared legacy
pages. Charset labels are looked up in the WHATWG Encoding Standard's label table
(``webencodings``): ``latin1``/``ascii``/``iso-8859-1`` mean windows-1252, ``shift_jis`` means
windows-31j, and labels that are not in the table (``utf-7``, typos) or that no page text
should be decoded with (``x-user-defined``, ``replacement``) are ignored, falling through to
the next step. charset-normalizer is only a tie-breaker after UTF-8 failed: it is asked when
windows-1252 cannot decode the bytes at all (0x81 0x8D 0x8F 0x90 0x9D), or when the
windows-1252 text reads like mojibake (long runs of accented letters and symbols, as a
Shift_JIS, GBK or windows-1251 page gives), and its answer is taken only if it reads like
real text.

Every scan of page text here is linear: ``<meta>`` tags are found with bounded searches (a
tag longer than 1 KiB is not a tag we read), never with an unbounded lazy ``[^>]*?``.
"""

from __future__ import annotations

import codecs
import re
import unicodedata
from typing import Mapping, Union

import webencodings

_TAG_MAX = 1024          # a <meta> tag longer than this is not read (nor rewritten)
_META_HEAD = 16384       # bytes of the body searched for a <meta> / XML charset
_BOMS = ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF32_LE, "utf-32-le"),
         (codecs.BOM_UTF32_BE, "utf-32-be"), (codecs.BOM_UTF16_LE, "utf-16-le"),
         (codecs.BOM_UTF16_BE, "utf-16-be"))
_UNUSABLE = ("x-user-defined", "replacement")  # WHATWG encodings no page text is decoded with

_META_OPEN = re.compile(r"<meta(?=[\s/>])", re.I)
_META_OPEN_B = re.compile(rb"<meta(?=[\s/>])", re.I)
_CHARSET_ATTR = re.compile(r"""(charset\s{0,64}=\s{0,64}["']?\s{0,64})([A-Za-z0-9_.:\-]{1,64})""",
                           re.I)
_CHARSET_ATTR_B = re.compile(
    rb"""(charset\s{0,64}=\s{0,64}["']?\s{0,64})([A-Za-z0-9_.:\-]{1,64})""", re.I)
_XML_DECL = re.compile(rb"""<\?xml[^>]{0,1024}?encoding\s{0,64}=\s{0,64}["']([A-Za-z0-9_.:\-]{1,64})["']""",
                       re.I)
_XML_DECL_TEXT = re.compile(
    r"""(\s{0,1024}<\?xml[^>]{0,1024}?encoding\s{0,64}=\s{0,64}["'])([A-Za-z0-9_.:\-]{1,64})""", re.I)
_HEADER_CHARSET = re.compile(r"""charset\s{0,64}=\s{0,64}["']?([^\s;"']{1,64})""", re.I)

Text = Union[str, bytes]


def _codec(label: str | bytes | None) -> str | None:
    """Python codec name for a charset label by the WHATWG label table; None when the label
    is not in it (``utf-7``, ``bogus``) or names an encoding no page is decoded with."""
    if not label:
        return None
    if isinstance(label, bytes):
        label = label.decode("ascii", "replace")
    enc = webencodings.lookup(label.strip().strip("\"'"))
    if enc is None or enc.name in _UNUSABLE:
        return None
    return enc.codec_info.name


def header_charset(headers: Mapping[str, str] | None) -> str | None:
    content_type = _header(headers, "content-type") or ""
    m = _HEADER_CHARSET.search(content_type[:4096])
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


def _meta_tags(text: Text):
    """(start, end) of every ``<meta ...>`` tag of ``text`` (str or bytes) at most
    ``_TAG_MAX`` long, in order. Linear: each '>' is searched for once."""
    is_bytes = isinstance(text, bytes)
    opener, gt = (_META_OPEN_B, b">") if is_bytes else (_META_OPEN, ">")
    pos, next_gt = 0, -1
    while True:
        m = opener.search(text, pos)
        if m is None:
            return
        start = m.start()
        if next_gt < start:
            next_gt = text.find(gt, start)
            if next_gt == -1:  # no tag is closed after this point
                return
        if next_gt - start > _TAG_MAX:
            pos = m.end()
            continue
        yield start, next_gt + 1
        pos = next_gt + 1


def meta_charset(data: bytes) -> str | None:
    """Codec declared by <meta charset>, <meta http-equiv content="...; charset=">, or an
    XML declaration in the first 16 KiB; None if absent or not a WHATWG label. A <meta>
    whose label is unknown is skipped (the next one may declare a real charset)."""
    head = data[:_META_HEAD]
    codec = None
    for start, end in _meta_tags(head):
        m = _CHARSET_ATTR_B.search(head, start, end)
        codec = _codec(m.group(2)) if m else None
        if codec:
            break
    if codec is None:
        m = _XML_DECL.match(head)
        codec = _codec(m.group(1)) if m else None
    if codec and codec.startswith(("utf-16", "utf-32")):
        codec = "utf-8"  # a byte-oriented <meta> cannot really declare UTF-16 (WHATWG rule)
    return codec


def decode_html(data: bytes, headers: Mapping[str, str] | None = None) -> tuple[str, str]:
    """Decode an HTML body; returns (text, codec name) and never raises.

    Order: byte-order mark, then the HTTP ``Content-Type`` charset, then ``<meta charset>`` /
    ``<meta http-equiv>`` (or an XML declaration), then strict UTF-8, then windows-1252 (the
    browsers' default), with charset-normalizer as a tie-breaker (see the module docstring).
    The BOM comes first as in browsers: a BOM is proof, a header is a claim. A declared
    charset that does not decode cleanly falls through to the next step; labels are read by
    the WHATWG table ('latin-1' and 'ascii' mean windows-1252, 'utf-7' is no label).
    """
    text, codec, _ = decode_html_ex(data, headers)
    return text, codec


def decode_html_ex(data: bytes, headers: Mapping[str, str] | None = None) -> tuple[str, str, str]:
    """Like ``decode_html`` but also returns where the encoding came from: ``bom``,
    ``header``, ``meta``, ``utf-8`` (undeclared, valid UTF-8), ``default`` (undeclared,
    windows-1252) or ``detected`` (undeclared, charset-normalizer's answer)."""
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
    text = _try(data, "cp1252")
    if text is not None and _reads_as_latin(text):
        return text, "cp1252", "default"
    detected = _detect(data)
    if detected is not None:
        return detected[0], detected[1], "detected"
    if text is None:  # the 5 bytes windows-1252 leaves undefined become U+FFFD
        text = codecs.charmap_decode(data, "strict", _CP1252_REPLACING)[0]
    return text, "cp1252", "default"


# windows-1252 as a 256-character table, U+FFFD for 0x81 0x8D 0x8F 0x90 0x9D: decoding with it
# has no error-handler calls (errors="replace" on 5 MB of such bytes takes ~1 s)
_CP1252_REPLACING = "".join(bytes([i]).decode("cp1252", "replace") for i in range(256))


def _detect(data: bytes) -> tuple[str, str] | None:
    """charset-normalizer's decoding of ``data`` if it decodes strictly, is not a
    windows-1252 answer and reads like real text; else None."""
    try:
        from charset_normalizer import from_bytes

        best = from_bytes(data).best()
    except Exception:  # a detector failure must not lose the page
        return None
    if best is None or not best.encoding:
        return None
    codec = _codec(best.encoding) or best.encoding
    if codec == "cp1252":
        return None
    text = _try(data, codec)
    if text is None or not _reads_as_text(text):
        return None
    return text, codec


# ---- does decoded text read like a language, or like mojibake?

# punctuation and signs that real windows-1252 pages use (smart quotes, dashes, euro...)
_TYPOGRAPHIC = frozenset("\u2018\u2019\u201c\u201d\u2013\u2014\u2026\u2022\u20ac\u2122\u00a9"
                         "\u00ae\u00b0\u00a7\u00b6\u00ab\u00bb\u00b7\u00a1\u00bf\u00a3\u00bd"
                         "\u00bc\u00be\u00b2\u00b3\u00b9\u00d7\u00b1\u00ba\u00aa\u00a0\u00b4")
_NON_ASCII_RUN = re.compile(r"[^\x00-\x7f\s]+")
_SAMPLE_CHARS = 20000  # non-ASCII characters looked at


def _non_latin_letter(ch: str) -> bool:
    """A letter of a script other than Latin (Greek, Cyrillic, CJK...): beyond U+036F and
    outside Latin Extended Additional and the Latin ligatures. µ, ª, º, ˆ are Latin here:
    they are what windows-1252 bytes decode to."""
    o = ord(ch)
    return o >= 0x370 and not (0x1E00 <= o < 0x1F00 or 0xFB00 <= o < 0xFB07)


def _profile(text: str) -> dict:
    """Counts over (up to ``_SAMPLE_CHARS``) non-ASCII, non-space characters of ``text``:
    ``n``; ``letters`` (Unicode letters and marks); ``typographic`` (``_TYPOGRAPHIC``);
    ``controls`` (control, private-use, unassigned, U+FFFD); ``latin_runs``: characters in
    runs of 3+ adjacent non-ASCII characters none of which is a non-Latin letter (what
    CJK / Cyrillic / Greek bytes read as windows-1252 look like: 'Ìû íå ïåðåäà¸ì')."""
    n = letters = typographic = controls = latin_runs = 0
    for m in _NON_ASCII_RUN.finditer(text):
        run = m.group()[:_SAMPLE_CHARS - n]
        non_latin = False
        for ch in run:
            cat = unicodedata.category(ch)
            if cat[0] in "LM":
                letters += 1
                if not non_latin and _non_latin_letter(ch):
                    non_latin = True
            elif ch in _TYPOGRAPHIC:
                typographic += 1
            elif cat in ("Cc", "Co", "Cn", "Cs") or ch == "\ufffd":
                controls += 1
        if len(run) >= 3 and not non_latin:
            latin_runs += len(run)
        n += len(run)
        if n >= _SAMPLE_CHARS:
            break
    return {"n": n, "letters": letters, "typographic": typographic, "controls": controls,
            "latin_runs": latin_runs}


def _reads_as_latin(text: str) -> bool:
    """Whether windows-1252 text reads like a Latin-script language: its non-ASCII
    characters are mostly letters or typographic punctuation, standing alone or in pairs
    inside words (ç, ão, ö, “…”), not in long runs of accented letters and symbols."""
    p = _profile(text)
    if p["n"] == 0:
        return True
    return (p["latin_runs"] <= 0.25 * p["n"]
            and p["letters"] + p["typographic"] >= 0.75 * p["n"])


def _reads_as_text(text: str) -> bool:
    """Whether a detector's decoding reads like real text: most non-ASCII characters are
    letters (any script), hardly any are controls, and no long runs of Latin mojibake."""
    p = _profile(text)
    if p["n"] == 0:
        return True
    return (p["letters"] >= 0.6 * p["n"] and p["controls"] <= 0.01 * p["n"]
            and p["latin_runs"] <= 0.25 * p["n"])


def as_utf8_html(text: str) -> str:
    """The page text with its charset declarations rewritten to utf-8 (the saved file is
    UTF-8; a stale windows-1252 <meta> would make the next stage decode it wrongly): the
    first three <meta> tags that declare a charset, and a leading XML declaration."""
    out: list[str] = []
    pos = done = 0
    for start, end in _meta_tags(text):
        m = _CHARSET_ATTR.search(text, start, end)
        if m is None:
            continue
        out.append(text[pos:m.start(2)])
        out.append("utf-8")
        pos = m.end(2)
        done += 1
        if done == 3:
            break
    if out:
        out.append(text[pos:])
        text = "".join(out)
    m = _XML_DECL_TEXT.match(text)
    if m:
        text = text[:m.start(2)] + "utf-8" + text[m.end(2):]
    return text


def media_type(headers: Mapping[str, str] | None) -> str | None:
    value = _header(headers, "content-type")
    if not value:
        return None
    return value.split(";", 1)[0].strip().lower() or None
