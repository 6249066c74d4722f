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
   sha256 or the params hash (render params + this file + PyMuPDF version + fonts) changed;
   PDFs of pages no longer in the scrape manifest are deleted. Pages with no main text are
   counted rejections (``empty_content``), never crashes.
"""

from __future__ import annotations

import html as htmlmod
import io
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymupdf
from bs4 import BeautifulSoup, UnicodeDammit
from bs4.element import NavigableString, Tag

from policytune.core import records
from policytune.core.params import load_section, to_dict
from policytune.core.progress import Progress, get_logger

RAW_MANIFEST = "data/raw/manifest.jsonl"
PDF_DIR = "data/pdf"
STATS = "data/stats/render.json"

DEJAVU = "/usr/share/fonts/truetype/dejavu"


@dataclass
class RenderConfig:
    page_size: str = field(default="A4", metadata={"help": "paper size name known to pymupdf.paper_rect (A4, letter, ...)"})
    margin_pt: float = field(default=54.0, metadata={"help": "page margin on every side, in points (72 pt = 1 inch)"})
    font_size_pt: float = field(default=10.5, metadata={"help": "body text size in points; headings and tables scale from it"})
    fonts: dict = field(default_factory=lambda: {
        "regular": f"{DEJAVU}/DejaVuSans.ttf",
        "bold": f"{DEJAVU}/DejaVuSans-Bold.ttf",
        "italic": f"{DEJAVU}/DejaVuSans-Oblique.ttf",
        "bold_italic": f"{DEJAVU}/DejaVuSans-BoldOblique.ttf",
        "mono": f"{DEJAVU}/DejaVuSansMono.ttf",
    }, metadata={"help": "base font files (Debian fonts-dejavu-core); keys regular, bold, italic, "
                         "bold_italic, mono; an empty path uses MuPDF's built-in font"})
    cjk_font: str = field(default="/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
                          metadata={"help": "font for Chinese/Japanese/Korean runs (Debian fonts-noto-cjk); "
                                            "a .ttc face is picked per page (lang attribute, else kana/hangul); "
                                            "empty = MuPDF's built-in CJK fallback"})
    min_chars: int = field(default=20, metadata={"help": "pages whose main content has fewer non-space "
                                                         "characters are rejected as empty_content"})
    link_urls: bool = field(default=False, metadata={"help": "append absolute http(s) link targets in "
                                                             "parentheses after the link text"})
    chrome_pattern: str = field(default=r"cookie|consent|gdpr|banner|breadcrumb|skip-?link|newsletter",
                                metadata={"help": "regex (case-insensitive) matched against id, class, "
                                                  "aria-label and role; matching elements are dropped"})
    max_pdf_pages: int = field(default=300, metadata={"help": "pages longer than this many PDF pages are "
                                                              "rejected as too_long (runaway layout guard)"})


# --------------------------------------------------------------------------------------------
# 1. Main-content extraction (pure)
# --------------------------------------------------------------------------------------------

# Never content, wherever they are.
JUNK_TAGS = {"script", "style", "noscript", "template", "iframe", "frame", "frameset", "svg", "math",
             "canvas", "object", "embed", "applet", "form", "input", "button", "select", "option",
             "optgroup", "textarea", "datalist", "output", "meter", "progress", "dialog", "head",
             "title", "meta", "link", "base", "audio", "video", "source", "track", "map", "area",
             "img", "picture", "portal", "slot", "param", "noembed", "noframes", "xmp", "plaintext",
             "listing"}
# Page chrome: dropped unless they hold the main content (broken markup can leave a whole page
# inside an unclosed <nav>).
CHROME_TAGS = {"nav", "header", "footer", "aside", "menu"}
CHROME_ROLES = {"navigation", "banner", "contentinfo", "complementary", "search", "dialog",
                "alertdialog", "menu", "menubar", "toolbar", "form"}
HIDDEN_CLASSES = {"hidden", "d-none", "sr-only", "visually-hidden", "screen-reader-text", "hide"}
HIDDEN_STYLE = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden", re.I)

HEADINGS = {"h1", "h2", "h3", "h4", "h5", "h6"}
BLOCK_TAGS = HEADINGS | {"p", "div", "section", "article", "main", "header", "footer", "ul", "ol",
                         "li", "table", "thead", "tbody", "tfoot", "tr", "td", "th", "caption",
                         "blockquote", "pre", "dl", "dt", "dd", "figure", "figcaption", "address",
                         "details", "summary", "center", "hr", "body", "html", "nav", "aside",
                         "fieldset", "legend", "hgroup", "search"}
INLINE_MAP = {"b": "b", "strong": "b", "i": "i", "em": "i", "cite": "i", "dfn": "i", "var": "i",
              "u": "u", "ins": "u", "sub": "sub", "sup": "sup", "code": "code", "tt": "code",
              "kbd": "code", "samp": "code", "small": "small", "mark": "b", "q": "q"}
SIMPLE_BLOCKS = {"p": "p", "blockquote": "blockquote", "address": "p", "figcaption": "p",
                 "legend": "p", "summary": "p", "dt": "p", "dd": "dd"}
MAX_DEPTH = 60          # deeper markup is flattened to text: keeps MuPDF's layout bounded
_WS = re.compile(r"\s+")
# Raw-text elements are cut from the markup before parsing as well as from the tree after it.
# The text pass is deliberately conservative: whatever context a "<script" opener sits in
# (a comment, an attribute, a <noscript>, broken markup), everything from it to the next
# "</script" -- or to the end -- goes, so no parser's idea of where a script ends (libxml2 ends
# it at any "</script", browsers only at "</script" + [\s/>]) can turn script text into page
# text. Script first, so a "<script" inside another raw-text element is cut the same way.
_RAW_TEXT = [re.compile(rf"<{t}\b.*?(?:</{t}[^>]*>|$)", re.I | re.S)
             for t in ("script", "style", "noscript", "template", "textarea", "title", "xmp",
                       "iframe", "noembed", "noframes")]

# Characters XML 1.0 forbids (C0 controls except tab/newline/CR, lone surrogates, U+FFFE/F).
_BAD_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff\ufffe\uffff]")
# Han, kana, hangul, CJK punctuation and full-width forms: set in the CJK font.
CJK_CHARS = ("\u1100-\u11ff\u2e80-\u2fdf\u2ff0-\u2fff\u3000-\u303f\u3040-\u30ff\u3100-\u312f"
             "\u3130-\u318f\u3190-\u31ff\u3200-\u32ff\u3300-\u33ff\u3400-\u4dbf\u4e00-\u9fff"
             "\ua960-\ua97f\uac00-\ud7af\ud7b0-\ud7ff\uf900-\ufaff\ufe30-\ufe4f\uff00-\uffef"
             "\U00020000-\U0003134f")
_CJK_RUN = re.compile(f"[{CJK_CHARS}]+")


def _cut_raw_text(text: str, keep_title: bool = False) -> str:
    for rx in _RAW_TEXT:
        if not (keep_title and rx.pattern.startswith("<title")):
            text = rx.sub(" ", text)
    return text


@dataclass
class MainContent:
    title: str
    body_xhtml: str          # safe XHTML fragment of the main content
    text: str                # its plain text (what the PDF will say), for counts and checks
    root: str                # which rule picked the content: main, role=main, article, #id, densest, body
    lang: str = ""

    @property
    def chars(self) -> int:
        return sum(1 for c in self.text if not c.isspace())


def clean_text(s: str) -> str:
    """Drop characters XML cannot carry (NUL, C0 controls, lone surrogates)."""
    return _BAD_XML.sub("", s)


def decode_html(data: bytes | str) -> str:
    if isinstance(data, str):
        return data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        dammit = UnicodeDammit(data, is_html=True)
        if dammit.unicode_markup is not None:
            return dammit.unicode_markup
        return data.decode("utf-8", errors="replace")


def _attr(tag: Tag, name: str) -> str:
    v = tag.attrs.get(name) if isinstance(tag.attrs, dict) else None
    if v is None:
        return ""
    if isinstance(v, (list, tuple)):
        return " ".join(str(x) for x in v)
    return str(v)


def _is_hidden(tag: Tag) -> bool:
    if "hidden" in tag.attrs or _attr(tag, "aria-hidden").strip().lower() == "true":
        return True
    if HIDDEN_STYLE.search(_attr(tag, "style")):
        return True
    classes = {c.lower() for c in _attr(tag, "class").split()}
    return bool(classes & HIDDEN_CLASSES)


def _is_chrome(tag: Tag, pattern: re.Pattern) -> bool:
    if tag.name in CHROME_TAGS:
        return True
    role = _attr(tag, "role").strip().lower()
    if role in CHROME_ROLES:
        return True
    hay = " ".join((_attr(tag, "id"), _attr(tag, "class"), _attr(tag, "aria-label"), role))
    return bool(hay.strip()) and bool(pattern.search(hay))


def _in_article(t: Tag, max_up: int = MAX_DEPTH) -> bool:
    node = t.parent
    for _ in range(max_up):
        if node is None:
            return False
        if node.name == "article":
            return True
        node = node.parent
    return False


def _is_main_like(t: Tag) -> bool:
    return (t.name in ("main", "article") or _attr(t, "role").strip().lower() == "main"
            or _attr(t, "id").strip().lower() in ("content", "main-content", "main"))


def _main_holders(soup: BeautifulSoup, limit: int = 20) -> set[int]:
    """ids of the first ``limit`` main-content elements and of all their ancestors (bounded:
    hostile markup may nest thousands of <main>s inside thousands of <nav>s)."""
    held: set[int] = set()
    for t in soup.find_all(_is_main_like, limit=limit):
        node = t
        while node is not None and id(node) not in held:
            held.add(id(node))
            node = node.parent
    return held


def _text_len(tag: Tag) -> int:
    return sum(len(s.strip()) for s in tag.find_all(string=True) if type(s) is NavigableString)


def _drop_protected(node: Tag) -> bool:
    return node.name in ("html", "body", "[document]")


def _pick_root(body: Tag, min_chars: int) -> tuple[Tag, str]:
    """The element holding the main content, and the rule that chose it."""
    total = _text_len(body)
    need = max(min_chars, int(0.25 * total))

    def ok(t: Tag | None) -> bool:
        return t is not None and _text_len(t) >= need

    mains = body.find_all("main")
    if len(mains) == 1 and ok(mains[0]):
        return mains[0], "main"
    roles = body.find_all(attrs={"role": re.compile(r"^\s*main\s*$", re.I)})
    if len(roles) == 1 and ok(roles[0]):
        return roles[0], "role=main"
    articles = body.find_all("article")
    if len(articles) == 1 and ok(articles[0]):
        return articles[0], "article"
    for ident in ("content", "main-content", "main"):
        t = body.find(id=ident)
        if isinstance(t, Tag) and ok(t):
            return t, f"#{ident}"
    # Densest block: the deepest element that still holds >= 80% of the remaining text.
    node, rule = body, "body"
    if total:
        for _ in range(MAX_DEPTH):
            best = None
            for child in node.find_all(True, recursive=False):
                if _text_len(child) >= 0.8 * total:
                    best = child
                    break
            if best is None:
                break
            node, rule = best, "densest"
    return node, rule


def extract_main(html: bytes | str, url: str = "", cfg: RenderConfig | None = None) -> MainContent:
    """Main content of one HTML page as safe XHTML + plain text (pure; never raises on bad HTML)."""
    cfg = cfg or RenderConfig()
    text = clean_text(decode_html(html))
    content = _extract(text, url, cfg, lenient=False)
    if content.chars < cfg.min_chars:
        # Broken markup can leave the whole page inside an unclosed <nav>/<header>: keep the
        # structural chrome rather than lose the page (scripts, styles, hidden still go).
        alt = _extract(text, url, cfg, lenient=True)
        if alt.chars > content.chars:
            content = alt
    return content


def _extract(text: str, url: str, cfg: RenderConfig, lenient: bool) -> MainContent:
    text = _cut_raw_text(text, keep_title=True)
    title_m = re.search(r"<title\b[^>]*>(.*?)(?:</title|$)", text, re.I | re.S)
    title = _fragment_text(htmlmod.unescape(title_m.group(1))) if title_m else ""
    text = _cut_raw_text(text)
    soup = BeautifulSoup(text, "lxml")
    lang = ""
    html_tag = soup.find("html")
    if isinstance(html_tag, Tag):
        lang = _attr(html_tag, "lang").strip()[:20]

    # Comments, CDATA, doctype and processing instructions are skipped by the converter (it
    # only takes plain NavigableStrings); junk, hidden and chrome elements are cut here.
    body = soup.find("body") or soup
    pattern = re.compile(cfg.chrome_pattern, re.I) if cfg.chrome_pattern else None
    drops, spared = _plan_drops(soup, pattern, structural=not lenient)
    for t in drops:
        t.decompose()
    root, rule = _pick_root(body, cfg.min_chars)
    if not title:
        h1 = body.find("h1")
        title = _WS.sub(" ", h1.get_text(" ")).strip() if isinstance(h1, Tag) else ""
    title = title[:300] or url or "untitled"

    conv = _Converter(cfg.link_urls)
    conv.block(root, 0)
    body_xhtml = conv.result()
    content = MainContent(title=title, body_xhtml=body_xhtml, text=conv.plain(), root=rule, lang=lang)
    if spared or lenient:
        content.root += "+lenient"
    return content


def _fragment_text(s: str) -> str:
    """Plain text of a markup fragment (titles), junk elements removed."""
    if "<" not in s:
        return _WS.sub(" ", s).strip()
    frag = BeautifulSoup(_cut_raw_text(s), "lxml")
    drops, _ = _plan_drops(frag, None)
    for t in drops:
        t.decompose()
    return _WS.sub(" ", " ".join(str(x) for x in frag.find_all(string=True)
                                 if type(x) is NavigableString)).strip()


def _plan_drops(soup: BeautifulSoup, pattern: re.Pattern | None,
                structural: bool = True) -> tuple[list[Tag], bool]:
    """Top-most elements to cut: junk tags, hidden elements, page chrome (nav, header, footer,
    aside, cookie/consent banners) unless they hold the main content. One iterative pre-order
    walk that does not descend into what it cuts, so it is linear even in 20,000-deep markup.
    Returns (elements, whether some chrome had to be spared)."""
    drops: list[Tag] = []
    spared = False
    holders = _main_holders(soup)
    stack: list[Any] = list(reversed(soup.contents))
    while stack:
        t = stack.pop()
        if not isinstance(t, Tag):
            continue
        name = (t.name or "").lower()
        if not _drop_protected(t):
            if name in JUNK_TAGS or ":" in name or _is_hidden(t):
                drops.append(t)
                continue
            chrome = structural and (name in CHROME_TAGS or _attr(t, "role").strip().lower() in CHROME_ROLES)
            banner = structural and pattern is not None and _is_chrome(t, pattern)
            if chrome or banner:
                if name == "header" and _in_article(t):
                    pass          # an article's own header holds its heading
                elif id(t) in holders:
                    spared = True  # e.g. an unclosed <nav> swallowed the page: keep its content
                else:
                    drops.append(t)
                    continue
        stack.extend(reversed(t.contents))
    return drops, spared


class _Converter:
    """Rebuild a BeautifulSoup subtree as whitelisted XHTML. Recursion is capped at MAX_DEPTH;
    anything deeper is flattened to its text. Only plain NavigableStrings become text (comments,
    CDATA, doctypes and processing instructions are skipped)."""

    def __init__(self, link_urls: bool):
        self.out: list[str] = []
        self.text: list[str] = []
        self.link_urls = link_urls

    def result(self) -> str:
        return "".join(self.out)

    def plain(self) -> str:
        return _WS.sub(" ", " ".join(self.text)).strip()

    # -- text ---------------------------------------------------------------------------------
    def _emit_text(self, s: str, pre: bool = False) -> None:
        s = clean_text(s)
        if not pre:
            s = _WS.sub(" ", s)
        if not s:
            return
        self.text.append(s)
        self.out.append(_cjk_wrap(htmlmod.escape(s, quote=False)))

    def _flat_text(self, node: Tag) -> None:
        parts = [str(s) for s in node.find_all(string=True) if type(s) is NavigableString]
        self._emit_text(" ".join(parts))

    # -- structure ----------------------------------------------------------------------------
    def block(self, node: Tag, depth: int) -> None:
        """Children of a container, in order."""
        for child in list(node.children):
            self.node(child, depth + 1)

    def node(self, n: Any, depth: int) -> None:
        if isinstance(n, NavigableString):
            if type(n) is NavigableString:
                self._emit_text(str(n))
            return
        if not isinstance(n, Tag):
            return
        name = (n.name or "").lower()
        if depth > MAX_DEPTH:
            self._flat_text(n)
            return
        if name in HEADINGS:
            self._wrap(name, n, depth, inline_only=True)
        elif name in SIMPLE_BLOCKS:
            self._wrap(SIMPLE_BLOCKS[name], n, depth, inline_only=name in ("p", "dt", "summary", "legend"))
        elif name in ("ul", "ol", "menu", "dir"):
            self._list("ol" if name == "ol" else "ul", n, depth)
        elif name == "li":
            self._wrap("p", n, depth)      # stray <li> outside a list
        elif name == "table":
            self._table(n, depth)
        elif name == "pre":
            txt = "".join(str(s) for s in n.find_all(string=True) if type(s) is NavigableString)
            if txt.strip():
                self.out.append("<pre>")
                self._emit_text(txt.strip("\n"), pre=True)
                self.out.append("</pre>")
        elif name == "br":
            self.out.append("<br/>")
            self.text.append(" ")
        elif name in INLINE_MAP:
            tag = INLINE_MAP[name]
            if n.find(lambda t: t.name in BLOCK_TAGS) is not None:
                self.block(n, depth)       # inline tag wrapping blocks: keep the blocks
            else:
                self._wrap(tag, n, depth, inline_only=True, keep_empty=False)
        elif name == "a":
            self.block(n, depth)
            href = _attr(n, "href")
            if self.link_urls and re.match(r"https?://", href) and len(href) < 300:
                self._emit_text(f" ({href})")
        elif name == "hr":
            self.out.append('<div class="hr"></div>')
        elif name in ("tr", "td", "th", "thead", "tbody", "tfoot", "caption"):
            self._wrap("div", n, depth)    # table parts outside a table
        elif name in BLOCK_TAGS:
            self._wrap("div", n, depth)
        else:
            self.block(n, depth)           # span, font, label, custom elements: transparent

    def _wrap(self, tag: str, n: Tag, depth: int, inline_only: bool = False, keep_empty: bool = False) -> None:
        start = len(self.out)
        ntext = len(self.text)
        self.out.append(f"<{tag}>")
        if inline_only:
            self._inline_children(n, depth)
        else:
            self.block(n, depth)
        if not keep_empty and not "".join(self.text[ntext:]).strip():
            del self.out[start:]
            del self.text[ntext:]
            return
        self.out.append(f"</{tag}>")
        if tag in ("p", "div", "blockquote", "dd") or tag in HEADINGS:
            self.text.append("\n")

    def _inline_children(self, n: Tag, depth: int) -> None:
        """Inside p/h*: block children are flattened so the XHTML nesting stays valid."""
        for child in list(n.children):
            if isinstance(child, Tag) and child.name in BLOCK_TAGS:
                if child.name == "br":
                    self.node(child, depth + 1)
                    continue
                self._emit_text(" ")
                self._flat_text(child)
                self._emit_text(" ")
            else:
                self.node(child, depth + 1)

    def _list(self, tag: str, n: Tag, depth: int) -> None:
        start, ntext = len(self.out), len(self.text)
        self.out.append(f"<{tag}>")
        loose: list[Any] = []

        def flush_loose() -> None:
            if any(isinstance(x, Tag) or str(x).strip() for x in loose):
                self.out.append("<li>")
                for x in loose:
                    self.node(x, depth + 1)
                self.out.append("</li>")
            loose.clear()

        for child in list(n.children):
            if isinstance(child, Tag) and child.name == "li":
                flush_loose()
                s2, t2 = len(self.out), len(self.text)
                self.out.append("<li>")
                self.block(child, depth + 1)
                if not "".join(self.text[t2:]).strip():
                    del self.out[s2:]
                    del self.text[t2:]
                    continue
                self.out.append("</li>")
                self.text.append("\n")
            elif isinstance(child, (Tag, NavigableString)):
                loose.append(child)
        flush_loose()
        if not "".join(self.text[ntext:]).strip():
            del self.out[start:]
            del self.text[ntext:]
            return
        self.out.append(f"</{tag}>")

    def _table(self, n: Tag, depth: int) -> None:
        # Layout tables (a nested table or headings inside) are unwrapped into blocks.
        if _attr(n, "role").lower() == "presentation" or n.find(["table", "h1", "h2", "h3", "h4", "h5", "h6"]) is not None:
            self._wrap("div", n, depth)
            return
        rows: list[Tag] = [r for r in n.find_all("tr") if r.find_parent("table") is n]
        caption = n.find("caption")
        if isinstance(caption, Tag) and caption.find_parent("table") is n:
            self._wrap("p", caption, depth, inline_only=True)
        # Text that sits in the table but in no row (broken markup) goes before it.
        stray = [s for s in n.find_all(string=True) if type(s) is NavigableString and s.strip()
                 and s.find_parent("tr") is None and s.find_parent("caption") is None]
        if stray:
            self.out.append("<p>")
            self._emit_text(" ".join(str(s) for s in stray))
            self.out.append("</p>")
        if not rows:
            return
        start, ntext = len(self.out), len(self.text)
        self.out.append("<table>")
        for r in rows:
            cells = [c for c in r.find_all(["td", "th"], recursive=False)]
            if not cells:
                continue
            self.out.append("<tr>")
            for c in cells:
                tag = "th" if c.name == "th" else "td"
                span = ""
                for a in ("colspan", "rowspan"):
                    v = _attr(c, a).strip()
                    if v.isdigit() and 1 < int(v) <= 50:
                        span += f' {a}="{int(v)}"'
                self.out.append(f"<{tag}{span}>")
                self.block(c, depth + 2)
                self.out.append(f"</{tag}>")
                self.text.append(" | ")
            self.out.append("</tr>")
            self.text.append("\n")
        if not "".join(self.text[ntext:]).replace("|", "").strip():
            del self.out[start:]
            del self.text[ntext:]
            return
        self.out.append("</table>")


def _cjk_wrap(escaped: str) -> str:
    return _CJK_RUN.sub(lambda m: f'<span class="cjk">{m.group(0)}</span>', escaped)


# --------------------------------------------------------------------------------------------
# 2. PDF rendering (pure: XHTML in, bytes out)
# --------------------------------------------------------------------------------------------

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
""")
    return "\n".join(css)


def story_html(content: MainContent, url: str) -> str:
    esc = lambda s: _cjk_wrap(htmlmod.escape(clean_text(s), quote=False))  # noqa: E731
    return (f'<h1 class="doc-title">{esc(content.title)}</h1>'
            f'<p class="doc-source">Source: {esc(url)}</p><div class="hr"></div>'
            f"{content.body_xhtml}")


class TooLong(Exception):
    pass


def render_pdf(content: MainContent, url: str, cfg: RenderConfig, fonts: Fonts) -> tuple[bytes, int]:
    """Lay ``content`` out as a PDF; returns (bytes, page count). Same input -> same bytes."""
    html = story_html(content, url)
    cjk_chars = "".join(sorted(set("".join(_CJK_RUN.findall(content.title + " " + content.text)))))
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


# --------------------------------------------------------------------------------------------
# 3. The stage: incremental rendering over the scrape manifest
# --------------------------------------------------------------------------------------------

def params_hash(cfg: RenderConfig, fonts: Fonts) -> str:
    code = records.sha256_file(__file__)
    return records.stable_id(to_dict(cfg), code, pymupdf.VersionBind, fonts.signature)


def render_pages(raw_rows: list[dict], base: Path, pdf_dir: str, cfg: RenderConfig,
                 old_manifest: list[dict] | None = None, fonts: Fonts | None = None,
                 log=None) -> tuple[list[dict], dict]:
    """Render every ok page of ``raw_rows`` into ``base/pdf_dir``; returns (manifest rows, stats).

    Reuses a previous PDF when its html sha256 and params hash match ``old_manifest``; deletes
    PDFs of pages that are gone. Paths in rows are relative to ``base``.
    """
    log = log or get_logger("render")
    fonts = fonts or Fonts(cfg)
    phash = params_hash(cfg, fonts)
    out_dir = base / pdf_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    old = {r["doc_id"]: r for r in (old_manifest or []) if "doc_id" in r}

    rejected: Counter = Counter()
    skipped: Counter = Counter()
    rows_out: list[dict] = []
    seen: set[str] = set()
    ok_rows = []
    for r in raw_rows:
        if r.get("status") != "ok":
            skipped[str(r.get("status") or "unknown")] += 1
            continue
        ok_rows.append(r)
    stats = {"pages_in": len(ok_rows), "pdfs": 0, "rerendered": 0, "reused": 0, "removed": 0,
             "pdf_pages": 0, "chars": 0}
    prog = Progress(log, "pages", len(ok_rows))
    for r in ok_rows:
        url = r.get("url") or r.get("final_url") or r.get("path") or ""
        doc_id = records.stable_id(url)
        pdf_rel = f"{pdf_dir}/{doc_id}.pdf"
        row = {"doc_id": doc_id, "url": url, "final_url": r.get("final_url") or url, "title": "",
               "html_sha256": "", "pdf_path": None, "pdf_sha256": None, "pages": 0, "chars": 0,
               "status": "ok", "error": None, "root": None, "params_hash": phash}
        prog.update(note=url[-60:])
        if doc_id in seen:
            row.update(status="rejected", error="duplicate_url")
            rejected["duplicate_url"] += 1
            rows_out.append(row)
            continue
        seen.add(doc_id)
        src = base / str(r.get("path") or "")
        if not r.get("path") or not src.is_file():
            row.update(status="rejected", error="missing_html")
            rejected["missing_html"] += 1
            rows_out.append(row)
            continue
        data = src.read_bytes()
        row["html_sha256"] = records.sha256_bytes(data)
        prev = old.get(doc_id)
        if (prev and prev.get("html_sha256") == row["html_sha256"] and prev.get("params_hash") == phash
                and prev.get("url") == url and _prev_valid(prev, base)):
            rows_out.append(prev)
            stats["reused"] += 1
            if prev["status"] == "ok":
                stats["pdfs"] += 1
                stats["pdf_pages"] += prev["pages"]
                stats["chars"] += prev["chars"]
            else:
                rejected[prev["error"]] += 1
            continue
        stats["rerendered"] += 1
        try:
            content = extract_main(data, url, cfg)
        except Exception as e:  # unparseable: counted, never fatal
            log.warning("%s: unparseable HTML (%s: %s)", url, type(e).__name__, e)
            content = None
        if content is None or content.chars < cfg.min_chars:
            row.update(status="rejected", error="empty_content",
                       title=content.title if content else "", chars=content.chars if content else 0)
            rejected["empty_content"] += 1
            (base / pdf_rel).unlink(missing_ok=True)
            rows_out.append(row)
            continue
        row.update(title=content.title, chars=content.chars, root=content.root)
        try:
            pdf, pages = render_pdf(content, url, cfg, fonts)
        except TooLong as e:
            row.update(status="rejected", error="too_long")
            log.warning("%s: %s", url, e)
            rejected["too_long"] += 1
            (base / pdf_rel).unlink(missing_ok=True)
            rows_out.append(row)
            continue
        records.atomic_write_bytes(base / pdf_rel, pdf)
        row.update(pdf_path=pdf_rel, pdf_sha256=records.sha256_bytes(pdf), pages=pages)
        rows_out.append(row)
        stats["pdfs"] += 1
        stats["pdf_pages"] += pages
        stats["chars"] += content.chars

    keep = {f"{r['doc_id']}.pdf" for r in rows_out if r["status"] == "ok"}
    for p in sorted(out_dir.iterdir()):
        if p.name == "manifest.jsonl" or p.name in keep:
            continue
        if p.is_file() and (p.suffix == ".pdf" or p.name.endswith(".tmp")):
            p.unlink()
            stats["removed"] += p.suffix == ".pdf"
    rows_out.sort(key=lambda r: (r["url"], r["doc_id"]))
    stats["rejected"] = sum(rejected.values())
    stats["rejected_by_reason"] = dict(sorted(rejected.items()))
    stats["skipped_not_ok"] = sum(skipped.values())
    return rows_out, stats


def _prev_valid(prev: dict, base: Path) -> bool:
    if prev.get("status") != "ok":
        return prev.get("status") == "rejected" and bool(prev.get("error"))
    p = base / str(prev.get("pdf_path") or "")
    return p.is_file() and records.sha256_file(p) == prev.get("pdf_sha256")


def main() -> int:
    log = get_logger("render")
    cfg = load_section(RenderConfig, "render")
    t0 = time.monotonic()
    raw = records.read_jsonl(RAW_MANIFEST)
    manifest = Path(PDF_DIR) / "manifest.jsonl"
    old = records.read_jsonl(manifest) if manifest.exists() else []
    rows, stats = render_pages(raw, Path("."), PDF_DIR, cfg, old, log=log)
    records.write_jsonl(manifest, rows)
    records.write_json(STATS, stats)   # counts only: wall time would make `dvc metrics diff` noisy
    log.info("%d pages in -> %d PDFs (%d PDF pages): %d rendered, %d reused, %d removed, rejected %s in %.1fs",
             stats["pages_in"], stats["pdfs"], stats["pdf_pages"], stats["rerendered"], stats["reused"],
             stats["removed"], stats["rejected_by_reason"] or "none", time.monotonic() - t0)
    if stats["pages_in"] and not stats["pdfs"]:
        log.error("no page produced a PDF")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
