"""Main content of a saved HTML page, rebuilt as small, safe XHTML (render's step 1, pure).

BeautifulSoup keeps the page's main content -- <main>, [role=main], a single <article>, #content,
or else the block holding most of the text -- and drops the chrome around it (nav, header,
footer, aside, scripts, styles, forms, iframes, svg, hidden elements, cookie/consent banners).
It rebuilds that content as small, safe XHTML from a whitelist of tags (headings, paragraphs,
lists, tables, blockquote, pre, inline emphasis); links keep their text, every attribute except
colspan/rowspan is dropped. Runs of characters that need the CJK font are wrapped in
``<span class="cjk">``.

:class:`RenderConfig` (params.yaml ``render``) lives here, the lowest of render's modules
(``pdf`` lays the XHTML out, ``render`` runs the stage's incremental pass over both).
"""

from __future__ import annotations

import html as htmlmod
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from bs4 import BeautifulSoup, UnicodeDammit
from bs4.element import NavigableString, Tag

from policytune.core.params import NonNegFloat, NonNegInt, PositiveFloat, PositiveInt

DEJAVU = "/usr/share/fonts/truetype/dejavu"


@dataclass
class RenderConfig:
    page_size: str = field(default="A4", metadata={"help": "paper size name known to pymupdf.paper_rect (A4, letter, ...)"})
    margin_pt: NonNegFloat = field(default=54.0, metadata={"help": "page margin on every side, in points (72 pt = 1 inch)"})
    font_size_pt: PositiveFloat = field(default=10.5, metadata={"help": "body text size in points; headings and tables scale from it"})
    fonts: dict[Literal["regular", "bold", "italic", "bold_italic", "mono"], str] = field(default_factory=lambda: {
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
    min_chars: NonNegInt = field(default=20, metadata={"help": "pages whose main content has fewer non-space "
                                                         "characters are rejected as empty_content"})
    link_urls: bool = field(default=False, metadata={"help": "append absolute http(s) link targets in "
                                                             "parentheses after the link text"})
    chrome_pattern: str = field(default=r"cookie|consent|gdpr|banner|breadcrumb|skip-?link|newsletter",
                                metadata={"help": "regex (case-insensitive) matched against id, class, "
                                                  "aria-label and role; matching elements are dropped"})
    max_pdf_pages: PositiveInt = field(default=300, metadata={"help": "pages longer than this many PDF pages are "
                                                              "rejected as too_long (runaway layout guard)"})


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
# Han, kana, hangul, CJK punctuation and full-width forms: the characters set in the CJK font
# (not the same range as the one chunking counts one token per character).
CJK_FONT_CHARS = ("\u1100-\u11ff\u2e80-\u2fdf\u2ff0-\u2fff\u3000-\u303f\u3040-\u30ff\u3100-\u312f"
             "\u3130-\u318f\u3190-\u31ff\u3200-\u32ff\u3300-\u33ff\u3400-\u4dbf\u4e00-\u9fff"
             "\ua960-\ua97f\uac00-\ud7af\ud7b0-\ud7ff\uf900-\ufaff\ufe30-\ufe4f\uff00-\uffef"
             "\U00020000-\U0003134f")
CJK_FONT_RUN = re.compile(f"[{CJK_FONT_CHARS}]+")


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


def decode_saved_page(data: bytes | str) -> str:
    """Text of a saved page: UTF-8 (what scrape writes), else what UnicodeDammit guesses."""
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
    text = clean_text(decode_saved_page(html))
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
        self.out.append(cjk_wrap(htmlmod.escape(s, quote=False)))

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


def cjk_wrap(escaped: str) -> str:
    """Wrap runs of CJK-font characters of escaped text in ``<span class="cjk">``."""
    return CJK_FONT_RUN.sub(lambda m: f'<span class="cjk">{m.group(0)}</span>', escaped)
