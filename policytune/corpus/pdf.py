"""Clean XHTML -> a PDF (render's step 2, pure: same content in, same bytes out).

pymupdf.Story + DocumentWriter lay the XHTML out on A4 with the page title and source URL on the
first page. DejaVu fonts (accented Latin, Greek, Cyrillic) and Noto CJK are registered through a
pymupdf.Archive + @font-face; CJK runs are wrapped in ``<span class="cjk">`` (by
:func:`policytune.corpus.html.cjk_wrap`) and the CJK face is cut down with fontTools to the
glyphs the page uses (MuPDF cannot subset CFF fonts; a whole Noto CJK face is 16 MB). Fonts are
then subset and the PDF saved without dates or random ids, so the same HTML always gives the
same bytes.
"""

from __future__ import annotations

import html as htmlmod
import io
import re
import time
from pathlib import Path

import pymupdf

from policytune.core import records
from policytune.core.progress import get_logger
from policytune.corpus.html import CJK_FONT_RUN, MainContent, RenderConfig, break_long_runs, clean_text, cjk_wrap

_FONT_CSS = {"regular": ("normal", "normal"), "bold": ("bold", "normal"),
             "italic": ("normal", "italic"), "bold_italic": ("bold", "italic")}


class Fonts:
    """Font files for the Story archive, loaded once per process."""

    def __init__(self, cfg: RenderConfig):
        self.files: dict[str, bytes] = {}
        for key, path in sorted(cfg.fonts.items()):
            if key not in (*_FONT_CSS, "mono"):
                raise ValueError(f"render.fonts: unknown key {key!r}; valid: {', '.join([*_FONT_CSS, 'mono'])}")
            if path:
                self.files[key] = _read_font(path, "fonts-dejavu-core")
        self.cjk_path = cfg.cjk_font
        self.cjk_faces: dict[str, int] = {}
        self.cjk_ok = False
        if self.cjk_path:
            _read_font(self.cjk_path, "fonts-noto-cjk", probe=True)
            try:
                self.cjk_faces = _cjk_faces(self.cjk_path)
                self.cjk_ok = True
            except ImportError:       # fontTools missing: MuPDF's built-in CJK fallback still draws glyphs
                get_logger("render").warning("fontTools not importable: CJK uses MuPDF's built-in fallback font")
        self._cjk_cache: dict[tuple[int, str], bytes] = {}
        self.signature = records.stable_id(
            {k: records.sha256_bytes(v) for k, v in self.files.items()},
            [self.cjk_path, Path(self.cjk_path).stat().st_size if self.cjk_path else 0, self.cjk_ok])

    def cjk_subset(self, face: int, chars: str) -> bytes:
        """The CJK face cut down to ``chars`` (deterministic bytes)."""
        key = (face, chars)
        if key not in self._cjk_cache:
            from fontTools import subset
            from fontTools.ttLib import TTFont

            font = TTFont(self.cjk_path, fontNumber=face, lazy=True, recalcTimestamp=False)
            opts = subset.Options()
            opts.layout_features = []   # MuPDF's HTML layout uses plain cmap lookups
            opts.drop_tables += ["GSUB", "GPOS", "GDEF", "BASE", "JSTF", "VORG", "vhea", "vmtx", "DSIG"]
            opts.desubroutinize = True  # faster than pruning subroutines of a 65k-glyph CFF
            opts.notdef_outline = True
            sub = subset.Subsetter(opts)
            sub.populate(text=chars)
            sub.subset(font)
            if "CFF " in font:
                font.recalcBBoxes = False   # hhea/head recalc would look glyphs up by old name
                _identity_cids(font)
            buf = io.BytesIO()
            font.save(buf)
            self._cjk_cache = {key: buf.getvalue()}   # keep one: pages rarely share glyph sets
        return self._cjk_cache[key]

    def face_for(self, lang: str, text: str) -> int:
        if not self.cjk_faces:
            return 0
        lang = lang.lower()
        want = ""
        if lang.startswith("ja"):
            want = "JP"
        elif lang.startswith("ko"):
            want = "KR"
        elif lang.startswith("zh"):
            want = "HK" if "hk" in lang else "TC" if ("tw" in lang or "hant" in lang or "mo" in lang) else "SC"
        elif re.search("[\u3040-\u30ff]", text):
            want = "JP"
        elif re.search("[\uac00-\ud7af]", text) and not re.search("[\u4e00-\u9fff]", text):
            want = "KR"
        else:
            want = "SC"
        return self.cjk_faces.get(want, 0)


def _identity_cids(font) -> None:
    """Renumber a subset CID-keyed CFF so that CID == glyph id.

    MuPDF writes glyph ids as CIDs (Identity-H) but a CID-keyed CFF maps CIDs through its
    charset; after subsetting, glyph 5 may still be CID 1408 and would draw nothing. Only the
    CFF table's names change: cmap/hmtx are compiled by glyph index, which stays the same."""
    top = font["CFF "].cff.topDictIndex[0]
    if not hasattr(top, "ROS"):
        return
    order = list(top.charset)
    mapping = {g: (".notdef" if i == 0 else f"cid{i:05d}") for i, g in enumerate(order)}
    cs = top.CharStrings
    cs.charStrings = {mapping[k]: v for k, v in cs.charStrings.items()}
    top.charset = [mapping[g] for g in order]


def _read_font(path: str, package: str, probe: bool = False) -> bytes:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"font {path} not found: install the Debian package {package} "
                                f"(the set-up does this as root) or point params.yaml render at another font")
    return b"" if probe else p.read_bytes()


def _cjk_faces(path: str) -> dict[str, int]:
    """Region tag (JP, KR, SC, TC, HK) -> face index inside a Noto/Source Han collection."""
    from fontTools.ttLib import TTCollection

    if not path.lower().endswith((".ttc", ".otc")):
        import fontTools  # noqa: F401  (fails early when fontTools is missing)
        return {}
    faces: dict[str, int] = {}
    coll = TTCollection(path, lazy=True)
    for i, font in enumerate(coll.fonts):
        name = font["name"].getDebugName(4) or ""
        m = re.search(r"\b(JP|KR|SC|TC|HK)\b", name)
        if m and "Mono" not in name and m.group(1) not in faces:
            faces[m.group(1)] = i
    return faces


def story_css(cfg: RenderConfig, fonts: Fonts, with_cjk: bool) -> str:
    fs = cfg.font_size_pt
    css = []
    for key, (weight, style) in _FONT_CSS.items():
        if key in fonts.files:
            css.append(f"@font-face {{font-family: body; src: url({key}.ttf); font-weight: {weight}; font-style: {style};}}")
    if "mono" in fonts.files:
        css.append("@font-face {font-family: mono; src: url(mono.ttf);}")
    if with_cjk:
        css.append("@font-face {font-family: cjk; src: url(cjk.otf);}")
        css.append("@font-face {font-family: cjk; src: url(cjk.otf); font-weight: bold;}")
    body_family = "body" if "regular" in fonts.files else "sans-serif"
    mono_family = "mono" if "mono" in fonts.files else "monospace"
    css.append(f"""
body {{font-family: {body_family}; font-size: {fs}pt; line-height: 1.35;}}
.cjk {{font-family: {'cjk' if with_cjk else 'inherit'};}}
h1, h2, h3, h4, h5, h6 {{font-weight: bold; margin: {fs * 0.9:.1f}pt 0 {fs * 0.4:.1f}pt 0; line-height: 1.2;}}
h1 {{font-size: {fs * 1.55:.2f}pt;}} h2 {{font-size: {fs * 1.35:.2f}pt;}} h3 {{font-size: {fs * 1.2:.2f}pt;}}
h4 {{font-size: {fs * 1.1:.2f}pt;}} h5, h6 {{font-size: {fs * 1.06:.2f}pt;}}
.doc-title {{font-size: {fs * 1.8:.2f}pt; margin-top: 0;}}
.doc-source {{font-size: {fs * 0.8:.2f}pt; color: #555555; margin: 0 0 {fs:.1f}pt 0;}}
.hr {{border-top: 0.5pt solid #999999; margin: {fs * 0.5:.1f}pt 0;}}
p {{margin: 0 0 {fs * 0.55:.1f}pt 0;}}
ul, ol {{margin: 0 0 {fs * 0.55:.1f}pt 0; padding-left: {fs * 1.8:.1f}pt;}}
li {{margin: 0 0 {fs * 0.2:.1f}pt 0;}}
table {{border-collapse: collapse; margin: {fs * 0.3:.1f}pt 0 {fs * 0.8:.1f}pt 0;}}
th, td {{border: 0.6pt solid #444444; padding: 2pt 4pt; font-size: {fs * 0.9:.2f}pt; vertical-align: top;}}
th {{font-weight: bold; background-color: #eeeeee;}}
blockquote {{margin: 0 0 {fs * 0.55:.1f}pt {fs * 1.5:.1f}pt; color: #333333; font-style: italic;}}
pre, code {{font-family: {mono_family}; font-size: {fs * 0.88:.2f}pt;}}
pre {{margin: 0 0 {fs * 0.55:.1f}pt 0; white-space: pre-wrap;}}
dd {{margin: 0 0 {fs * 0.4:.1f}pt {fs * 1.5:.1f}pt;}}
.pt {{margin: 0 0 0 {fs * 1.6:.1f}pt;}}
""")
    return "\n".join(css)


def story_html(content: MainContent, url: str) -> str:
    esc = lambda s: break_long_runs(cjk_wrap(htmlmod.escape(clean_text(s), quote=False)))  # noqa: E731
    return (f'<h1 class="doc-title">{esc(content.title)}</h1>'
            f'<p class="doc-source">Source: {esc(url)}</p><div class="hr"></div>'
            f"{content.body_xhtml}")


class TooLong(Exception):
    """Layout stopped: ``reason`` is too_long (max_pdf_pages) or too_slow (the deadline)."""

    def __init__(self, message: str, reason: str = "too_long"):
        super().__init__(message)
        self.reason = reason


def render_pdf(content: MainContent, url: str, cfg: RenderConfig, fonts: Fonts,
               deadline: float | None = None) -> tuple[bytes, int]:
    """Lay ``content`` out as a PDF; returns (bytes, page count). Same input -> same bytes.
    ``deadline`` (time.monotonic()) is checked between PDF pages."""
    html = story_html(content, url)
    cjk_chars = "".join(sorted(set("".join(CJK_FONT_RUN.findall(content.title + " " + content.text)))))
    archive = pymupdf.Archive()
    for key, data in fonts.files.items():
        archive.add(data, f"{key}.ttf")
    with_cjk = bool(cjk_chars) and fonts.cjk_ok
    if with_cjk:
        archive.add(fonts.cjk_subset(fonts.face_for(content.lang, cjk_chars), cjk_chars), "cjk.otf")
    story = pymupdf.Story(html=html, user_css=story_css(cfg, fonts, with_cjk), archive=archive)
    mediabox = pymupdf.paper_rect(cfg.page_size.lower())
    m = cfg.margin_pt
    where = mediabox + (m, m, -m, -m)
    buf = io.BytesIO()
    writer = pymupdf.DocumentWriter(buf)
    pages, more = 0, 1
    try:
        while more:
            if pages >= cfg.max_pdf_pages:
                raise TooLong(f"more than {cfg.max_pdf_pages} PDF pages")
            if deadline is not None and time.monotonic() > deadline:
                raise TooLong(f"layout passed render.max_seconds={cfg.max_seconds} after {pages} PDF pages",
                              "too_slow")
            dev = writer.begin_page(mediabox)
            more, _ = story.place(where)
            story.draw(dev)
            writer.end_page()
            pages += 1
    finally:
        writer.close()
    doc = pymupdf.open("pdf", buf.getvalue())
    try:
        doc.subset_fonts()
        doc.set_metadata({"title": clean_text(content.title), "subject": clean_text(url),
                          "creator": "policytune render", "producer": f"PyMuPDF {pymupdf.VersionBind}",
                          "creationDate": "", "modDate": ""})
        data = doc.tobytes(garbage=4, deflate=True, reproducible=True, no_new_id=True)
    finally:
        doc.close()
    return data, pages
