"""Main content of a saved HTML page, rebuilt as small, safe XHTML (render's step 1, pure).

What is kept. BeautifulSoup parses the page; junk (scripts, styles, form controls, media,
hidden elements) goes first -- what is left is the page's *visible text*. Then the chrome goes:
nav, header, footer, aside, chrome roles, cookie/consent banners (``chrome_pattern``), small
forms (a search box; a form that wraps the whole page, as ASP.NET WebForms does, is kept), and
blocks that are mostly links (``max_link_density``: share of a block's characters inside
``<a href>``, with at least 3 links) -- link density counts characters, so it works the same for
CJK mega-menus and English link lists. Visible text minus chrome is the page's *main text*.

The root: a landmark that holds most of the main text (one ``<main>``, one ``[role=main]``,
``#content``/``#main-content``/``#main``, or one ``<article>`` holding ``article_share`` of it; a
small citation ``<article>`` never wins). Blocks beside the root on the way up to ``<body>`` are
kept too when they look like document sections (at least ``section_min_chars`` characters, few
links: annexes, schedules, appendices as sibling blocks). Without a landmark the whole body
minus chrome is the content. Nothing is cut by a "densest block" rule.

Legal structure. Article / section / chapter / part / title / annex / appendix / schedule
headings (English, French, Dutch, German, Spanish, Portuguese, Italian; 第…条 / 第…章 in CJK,
제…조 in Korean) set as classed ``<p>``/``<div>`` become ``<h2>``..``<h5>`` (part, annex,
schedule: h2; chapter: h3; section: h4; article: h5), with the short title line that follows
them ("Record-keeping") merged in; "第一条　……" and "Art. 5º Para os fins ..." paragraphs are
split into the article heading and its text; short classed title paragraphs (``oj-ti-art``,
``LegP1GroupTitle``) are headings as well. Two-column tables whose first column is a point label
("(a)", "1.", "(iv)", "—") render as indented paragraphs "(a) the placing on the market ...".

Title: ``<title>``, unless it is a file name, a code or the site's name (``og:site_name``,
``application-name``, or the host name spelled out); then ``og:title``, the first ``<h1>``, or
the document's own title line (a short classed-title, centred or bold block at the top).

The rebuilt XHTML uses a whitelist of tags (headings, paragraphs, lists, tables, blockquote,
pre, inline emphasis); links keep their text, every attribute except colspan/rowspan is dropped.
Runs of characters that need the CJK font are wrapped in ``<span class="cjk">``; runs of more
than ``LONG_RUN`` characters without a break opportunity get zero-width spaces so that layout
stays linear.

Every pattern applied to page text is linear: raw-text cuts and title search use bounded
quantifiers; tree walks are iterative and never descend into what they cut.

:class:`RenderConfig` (params.yaml ``render``) lives here, the lowest of render's modules
(``pdf`` lays the XHTML out, ``render`` runs the stage's incremental pass over both).
"""

from __future__ import annotations

import html as htmlmod
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

from bs4 import BeautifulSoup, UnicodeDammit
from bs4.element import NavigableString, Tag

from policytune.core.params import Fraction, NonNegFloat, NonNegInt, PositiveFloat, PositiveInt

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
    chrome_pattern: str = field(default=r"cookie|consent|gdpr|banner|breadcrumb|skip-?link|newsletter|(?<![a-z])(?:footer|share|social|sidebar|related|toolbar)(?![a-z])",
                                metadata={"help": "regex (case-insensitive) matched against id, class, "
                                                  "aria-label and role; matching elements are dropped"})
    max_link_density: Fraction = field(default=0.5, metadata={"help": "blocks with at least 3 links whose "
                                       "characters are more than this share link text are navigation and dropped "
                                       "(1.0 = keep link lists)"})
    article_share: Fraction = field(default=0.6, metadata={"help": "a single <article> is the root only when it "
                                    "holds this share of the page's main text (a citation box does not)"})
    section_min_chars: PositiveInt = field(default=200, metadata={"help": "blocks beside the root with at least "
                                           "this many characters and few links are kept as document sections "
                                           "(annexes, schedules)"})
    min_retention: Fraction = field(default=0.9, metadata={"help": "pages whose PDF holds less than this share "
                                    "of their main text are flagged low_retention (counted and shown in the report)"})
    reject_low_retention: bool = field(default=False, metadata={"help": "true: low_retention pages get no PDF "
                                       "(rejected); false: their PDF is kept and chunked, still flagged"})
    max_seconds: PositiveFloat = field(default=20.0, metadata={"help": "wall-clock budget of "
                                "one page (parse, layout, PDF); a page over it is rejected as too_slow"})
    max_elements: PositiveInt = field(default=150_000, metadata={"help": "pages with more start tags (once scripts, "
                                      "styles and comments are cut) are rejected as too_complex before parsing "
                                      "(a tag bomb; a 2.8 MB regulation has ~92,000)"})
    workers: NonNegInt = field(default=0, metadata={"help": "pages rendered at once in forked workers; "
                                                    "0 = one per CPU core"})
    max_pdf_pages: PositiveInt = field(default=3000, metadata={"help": "pages longer than this many PDF pages are "
                                                               "rejected as too_long (max_seconds does the "
                                                               "protecting; real acts run to 300-600 pages)"})


# Never content, wherever they are. (<form> is not here: ASP.NET pages wrap everything in one;
# its controls are, and a small form -- a search box -- is chrome.)
JUNK_TAGS = {"script", "style", "noscript", "template", "iframe", "frame", "frameset", "svg", "math",
             "canvas", "object", "embed", "applet", "input", "button", "select", "option",
             "optgroup", "textarea", "datalist", "output", "meter", "progress", "dialog", "head",
             "title", "meta", "link", "base", "audio", "video", "source", "track", "map", "area",
             "img", "picture", "portal", "slot", "param", "noembed", "noframes", "xmp", "plaintext",
             "listing"}
# Page chrome: dropped unless they hold the main content (broken markup can leave a whole page
# inside an unclosed <nav>).
CHROME_TAGS = {"nav", "header", "footer", "aside", "menu"}
CHROME_ROLES = {"navigation", "banner", "contentinfo", "complementary", "search", "dialog",
                "alertdialog", "menu", "menubar", "toolbar"}
HIDDEN_CLASSES = {"hidden", "d-none", "sr-only", "visually-hidden", "screen-reader-text", "hide"}
HIDDEN_STYLE = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden", re.I)
SMALL_FORM_CHARS = 200   # a form with less text than this is a search box / login widget
MIN_NAV_LINKS = 3
MAX_NAV_LINK_CHARS = 40  # mean non-space characters of a navigation link's text

HEADINGS = {"h1", "h2", "h3", "h4", "h5", "h6"}
BLOCK_TAGS = HEADINGS | {"p", "div", "section", "article", "main", "header", "footer", "ul", "ol",
                         "li", "table", "thead", "tbody", "tfoot", "tr", "td", "th", "caption",
                         "blockquote", "pre", "dl", "dt", "dd", "figure", "figcaption", "address",
                         "details", "summary", "center", "hr", "body", "html", "nav", "aside",
                         "fieldset", "legend", "hgroup", "search", "form"}
INLINE_MAP = {"b": "b", "strong": "b", "i": "i", "em": "i", "cite": "i", "dfn": "i", "var": "i",
              "u": "u", "ins": "u", "sub": "sub", "sup": "sup", "code": "code", "tt": "code",
              "kbd": "code", "samp": "code", "small": "small", "mark": "b", "q": "q"}
SIMPLE_BLOCKS = {"p": "p", "blockquote": "blockquote", "address": "p", "figcaption": "p",
                 "legend": "p", "summary": "p", "dt": "p", "dd": "dd"}
MAX_DEPTH = 60          # deeper markup is flattened to text: keeps MuPDF's layout bounded
LONG_RUN = 80           # characters without a break opportunity before a zero-width space
ZWSP = "\u200b"
_WS = re.compile(r"\s+")
# Raw-text elements are cut from the markup before parsing as well as from the tree after it.
# The text pass is deliberately conservative: whatever context a "<script" opener sits in
# (a comment, an attribute, a <noscript>, broken markup), everything from it to the next
# "</script" -- or to the end -- goes, so no parser's idea of where a script ends (libxml2 ends
# it at any "</script", browsers only at "</script" + [\s/>]) can turn script text into page
# text. Script first, so a "<script" inside another raw-text element is cut the same way.
# Quantifiers are bounded: "</script" without ">" repeated 100,000 times is linear.
_RAW_TEXT = [re.compile(rf"<{t}\b.*?(?:</{t}[^>]{{0,256}}>|</{t}|$)", re.I | re.S)
             for t in ("script", "style", "noscript", "template", "textarea", "title", "xmp",
                       "iframe", "noembed", "noframes")]
_START_TAG = re.compile(r"<[A-Za-z]")
_TITLE = re.compile(r"<title\b[^>]{0,1024}>(.{0,4096}?)(?:</title|$)", re.I | re.S)

# Characters XML 1.0 forbids (C0 controls except tab/newline/CR, lone surrogates, U+FFFE/F).
_BAD_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff\ufffe\uffff]")
# Han, kana, hangul, CJK punctuation and full-width forms: the characters set in the CJK font
# (not the same range as the one chunking counts one token per character).
CJK_FONT_CHARS = ("\u1100-\u11ff\u2e80-\u2fdf\u2ff0-\u2fff\u3000-\u303f\u3040-\u30ff\u3100-\u312f"
             "\u3130-\u318f\u3190-\u31ff\u3200-\u32ff\u3300-\u33ff\u3400-\u4dbf\u4e00-\u9fff"
             "\ua960-\ua97f\uac00-\ud7af\ud7b0-\ud7ff\uf900-\ufaff\ufe30-\ufe4f\uff00-\uffef"
             "\U00020000-\U0003134f")
CJK_FONT_RUN = re.compile(f"[{CJK_FONT_CHARS}]+")
# A run that MuPDF cannot break: no whitespace, no CJK character, no hyphen or slash.
_LONG_RUN = re.compile(rf"[^\s{CJK_FONT_CHARS}\-/&<>]{{{LONG_RUN + 1},}}")

# ---- legal structure ------------------------------------------------------------------------
_KINDS = {
    "article": r"article|art\.?|artikel|art[íi]culo|artigo|articolo|artykuł",
    "section": r"section|sec\.|§§?|sektion|afdeling|secci[óo]n|sec[çc][ãa]o|se[çc][ãa]o|sezione|abschnitt|paragraaf",
    "chapter": r"chapter|chap\.|chapitre|hoofdstuk|kapitel|cap[íi]tulo|capitolo|subchapter",
    "part": r"part|partie|teil|deel|parte|subpart|division|subdivision",
    "title": r"title|titre|titel|t[íi]tulo|titolo|book|livre|buch|boek|libro|livro",
    "annex": r"annex|annexe|anhang|anlage|bijlage|anexo|allegato|appendix|appendice|ap[ée]ndice|schedule|"
             r"attachment|exhibit",
}
_BARE_ANNEX = re.compile(r"^(?:annex|annexe|anhang|anlage|bijlage|anexo|allegato|appendix|schedule|"
                         r"anexo [úu]nico|annexe unique)$", re.I)
_LEVEL = {"title": 2, "part": 2, "annex": 2, "chapter": 3, "section": 4, "article": 5}
_NUM = (r"(?:\d{1,4}[a-z]{0,3}(?:[.\-]\d{1,4}[a-z]?){0,3}|[IVXLCDM]{1,8}\b(?:-?[A-Z]\b)?|[A-Z]\b|preliminar[y]?|"
        r"[úu]nic[oa]|unique|premier|premi[èe]re|1er|primero|primeiro|first)")
_LEGAL = re.compile(rf"^(?P<kw>{'|'.join(f'(?P<{k}>{v})' for k, v in _KINDS.items())})\s*(?P<num>{_NUM})"
                    r"(?P<ord>\s?[ºª°]|\.º|\.(?=\s|$))?(?P<rest>.{0,160})$", re.I | re.S)
_CJK_NUM = "0-9０-９一二三四五六七八九十百千零〇两兩"
_CJK_LEGAL = re.compile(rf"^(?:第\s?[{_CJK_NUM}]{{1,8}}\s?(?P<cjk>[条條章节節编編篇款部])(?:之[{_CJK_NUM}]{{1,4}})?"
                        rf"|제\s?\d{{1,4}}\s?(?P<ko>[조장절편관])(?:의\s?\d{{1,3}})?(?:\([^)]{{1,30}}\))?)")
_CJK_LEVEL = {"条": 5, "條": 5, "款": 5, "조": 5, "节": 4, "節": 4, "절": 4, "관": 4, "章": 3, "장": 3,
              "编": 2, "編": 2, "篇": 2, "部": 2, "편": 2}
# "Art. 5º Para os fins ...": a Romance article label at the start of a long paragraph.
_ROMANCE_ART = re.compile(rf"^(?:art\.?|artigo|art[íi]culo|articolo)\s*\d{{1,4}}(?:[.\-]\d{{1,3}})?"
                          r"(?:\s?[ºª°]|\.º)?\.?(?:\s*[-–—])?(?=\s+\S)", re.I)
_TITLE_CLASS = re.compile(r"(?:^|[-_\s])(?:s?ti|title|subtitle|heading|rubric|doc-?ti|caption)(?:[-_\s\d]|$)|"
                          r"(?<=[a-z])(?:Title|Heading|Caption)", re.UNICODE)
_CLASS_LEVEL = [(re.compile(r"part", re.I), 2), (re.compile(r"doc-?ti|annex|schedule", re.I), 2),
                (re.compile(r"chap|section-1", re.I), 3), (re.compile(r"sect|p1group|division", re.I), 4),
                (re.compile(r"art", re.I), 5)]
MAX_HEADING_CHARS = 200


def legal_heading(text: str) -> tuple[int, str] | None:
    """(level, label) when ``text`` (a whole short block) is a legal structure heading:
    "Article 12", "CHAPTER III HIGH-RISK AI SYSTEMS", "Part 2—Privacy", "ANNEX III",
    "Section 5 Collection of personal information", "第一章 总则", "第十二条", "제3조(정의)"."""
    t = _WS.sub(" ", text).strip()
    if not t or len(t) > MAX_HEADING_CHARS:
        return None
    m = _CJK_LEGAL.match(t)
    if m:
        rest = t[m.end():].strip(" \u3000")
        kind = m.group("cjk") or m.group("ko")
        if kind in ("条", "條", "조"):   # an article label stands alone or with its caption only
            ok = not rest or re.fullmatch(r"[（(][^）)]{1,30}[）)]", rest) is not None
        else:                           # 第二章 认证要求: a short title, never a sentence
            ok = len(rest) <= 30 and not re.search(r"[。．；：，、,;:]", rest)
        return (_CJK_LEVEL[kind], t) if ok else None
    if _BARE_ANNEX.match(t):
        return 2, t
    m = _LEGAL.match(t)
    if not m:
        return None
    rest = m.group("rest").strip()
    kind = next(k for k in _KINDS if m.group(k))
    if rest:
        first = rest[0]
        words = len(rest.split())
        if not (first in "-–—:.(|[" or first.isupper() or first.isdigit() or not first.isascii()):
            return None     # "Article 5 applies to ..." is a sentence
        if rest.endswith((".", ";", ",", ":")) and words > 8:
            return None
        if kind == "section" and m.group("kw").startswith("§") and words > 8:
            return None
    return _LEVEL[kind], t


def split_article_label(text: str) -> tuple[int, str, str] | None:
    """(level, label, rest) for a paragraph that starts with its article number and goes on
    with the article's text: "第一条　为了……" or "Art. 5º Para os fins desta Lei, ..."."""
    t = text.lstrip()
    m = _CJK_LEGAL.match(t)
    if m and (m.group("cjk") in ("条", "條") or m.group("ko") == "조"):
        rest = t[m.end():]
        if rest[:1] in (" ", "\u3000", "\xa0") and len(rest.strip()) > 1:
            return 5, t[:m.end()], rest.strip(" \u3000\xa0")
        return None
    m = _ROMANCE_ART.match(t)
    if m and len(t) - m.end() > 40:
        return 5, t[:m.end()].strip(), t[m.end():].strip()
    return None


# ---- point tables ("(a) | the placing on the market ...") -------------------------------------
_NUMBER_SPAN = re.compile(r"(?:^|[\s_-])(?:\w*(?:No|Num|Number|LHS)|num|number|label|lhs)(?:$|[\s_-])")
_POINT_LABEL = re.compile(r"^(?:\(?(?:[a-z]{1,2}|[ivxlc]{1,6}|\d{1,3}[a-z]?|[A-Z])[).]?|\d{1,3}\.\d{1,3}\.?|[—–\-•·▪*])$")


def strip_comments(text: str) -> str:
    """``text`` without <!-- ... --> comments (an unclosed one runs to the end, as in browsers);
    a linear scan -- a run of 700,000 "<!---->" would otherwise become as many tree nodes."""
    if "<!--" not in text:
        return text
    out: list[str] = []
    i = 0
    while True:
        j = text.find("<!--", i)
        if j < 0:
            out.append(text[i:])
            break
        out.append(text[i:j])
        k = text.find("-->", j + 4)
        if k < 0:
            break
        out.append(" ")
        i = k + 3
    return "".join(out)


class TooComplex(ValueError):
    """More start tags than ``render.max_elements`` (a tag bomb): rejected before parsing."""


def element_count(text: str) -> int:
    """Start tags in ``text`` (what the parser would build nodes for)."""
    return sum(1 for _ in _START_TAG.finditer(text))


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
    root: str                # which rule picked the content: main, role=main, article, #id, body (+sections)
    lang: str = ""
    visible_chars: int = 0   # non-space characters a browser shows in <body> (after junk and hidden)
    chrome_chars: int = 0    # of those, dropped as page chrome (nav, header, banners, link lists)
    outside_chars: int = 0   # visible, not chrome, but outside the root and its kept sections
    sections_found: int = 0  # headings (h1-h6 and legal headings) in the main text
    sections_kept: int = 0   # headings in the kept content
    title_source: str = ""   # title, og:title, h1, title-line, url

    @property
    def chars(self) -> int:
        return nonspace_chars(self.text)

    @property
    def main_chars(self) -> int:
        """The page's main text: visible text minus chrome (the denominator of retention)."""
        return max(0, self.visible_chars - self.chrome_chars)


def clean_text(s: str) -> str:
    """Drop characters XML cannot carry (NUL, C0 controls, lone surrogates)."""
    return _BAD_XML.sub("", s)


def nonspace_chars(s: str) -> int:
    """Characters that are not whitespace (nor zero-width spaces): what retention counts."""
    return len("".join(s.split())) - s.count(ZWSP)


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
    if HIDDEN_STYLE.search(_attr(tag, "style")[:2000]):
        return True
    classes = {c.lower() for c in _attr(tag, "class").split()}
    return bool(classes & HIDDEN_CLASSES)


def _is_chrome(tag: Tag, pattern: re.Pattern) -> bool:
    if tag.name in CHROME_TAGS:
        return True
    role = _attr(tag, "role").strip().lower()
    if role in CHROME_ROLES:
        return True
    hay = " ".join((_attr(tag, "id"), _attr(tag, "class"), _attr(tag, "aria-label"), role))[:2000]
    return bool(hay.strip()) and bool(pattern.search(hay))


def _in_article(t: Tag, max_up: int = MAX_DEPTH, names: tuple[str, ...] = ("article",)) -> bool:
    node = t.parent
    for _ in range(max_up):
        if node is None:
            return False
        if node.name in names or ("main" in names and _attr(node, "role").strip().lower() == "main"):
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


class _Sizes:
    """Per element: non-space characters of its text, of its link text, its link count, and
    whether a block element sits inside it; one iterative post-order pass (linear, any depth)."""

    def __init__(self, root: Tag):
        self.m: dict[int, tuple[int, int, int, bool]] = {}
        stack: list[tuple[Tag, bool]] = [(root, False)]
        while stack:
            node, done = stack.pop()
            if not done:
                stack.append((node, True))
                stack.extend((c, False) for c in node.contents if isinstance(c, Tag))
                continue
            t = ln = k = 0
            blocks = False
            for c in node.contents:
                if isinstance(c, Tag):
                    ct, cl, ck, cb = self.m.get(id(c), (0, 0, 0, False))
                    t, ln, k = t + ct, ln + cl, k + ck
                    blocks = blocks or cb or (c.name in BLOCK_TAGS and c.name != "br")
                elif type(c) is NavigableString:
                    t += nonspace_chars(c)
            if node.name == "a" and node.has_attr("href"):
                ln, k = t, k + 1
            self.m[id(node)] = (t, ln, k, blocks)

    def chars(self, t: Tag) -> int:
        return self.m.get(id(t), (0, 0, 0, False))[0]

    def has_blocks(self, t: Tag) -> bool:
        return self.m.get(id(t), (0, 0, 0, False))[3]

    def link_dense(self, t: Tag, max_density: float) -> bool:
        """Navigation: at least 3 links, more than ``max_density`` of the characters in links,
        and short link texts (menus, link lists); a list of cited acts whose long titles are
        links ("Directive 2006/42/EC of the European Parliament ... on machinery") is content."""
        n, ln, k, _ = self.m.get(id(t), (0, 0, 0, False))
        return k >= MIN_NAV_LINKS and n > 0 and ln > max_density * n and ln <= MAX_NAV_LINK_CHARS * k


def _walk(root: Tag, visit) -> list[Tag]:
    """Top-most elements under ``root`` for which ``visit(tag)`` is true (not descending into
    them); iterative pre-order, so linear even in 20,000-deep markup."""
    out: list[Tag] = []
    stack: list[Any] = list(reversed(root.contents))
    while stack:
        t = stack.pop()
        if not isinstance(t, Tag):
            continue
        if visit(t):
            out.append(t)
            continue
        stack.extend(reversed(t.contents))
    return out


def _drop_protected(node: Tag) -> bool:
    return node.name in ("html", "body", "[document]")


def _junk_drops(soup: BeautifulSoup) -> list[Tag]:
    """Junk tags, namespaced tags, hidden elements and script links ("打印本页", "Print",
    "A+"): never content."""
    def visit(t: Tag) -> bool:
        name = (t.name or "").lower()
        if name == "a" and _attr(t, "href").strip().lower().startswith("javascript:"):
            return True
        return not _drop_protected(t) and (name in JUNK_TAGS or ":" in name or _is_hidden(t))
    return _walk(soup, visit)


def _chrome_drops(soup: BeautifulSoup, pattern: re.Pattern | None, sizes: _Sizes,
                  holders: set[int]) -> tuple[list[Tag], bool]:
    """Page chrome (nav, header, footer, aside, chrome roles, banners, small forms) unless it
    holds the main content. Returns (elements, whether some chrome had to be spared)."""
    spared = [False]

    def visit(t: Tag) -> bool:
        if _drop_protected(t):
            return False
        name = (t.name or "").lower()
        chrome = name in CHROME_TAGS or _attr(t, "role").strip().lower() in CHROME_ROLES
        chrome = chrome or (pattern is not None and _is_chrome(t, pattern))
        chrome = chrome or (name == "form" and sizes.chars(t) < SMALL_FORM_CHARS)
        if not chrome:
            return False
        if name == "header" and _in_article(t):
            return False          # an article's own header holds its heading
        if name in ("aside", "header", "footer") and _in_article(t, names=("main", "article")):
            return False          # inside the main content: a callout, a note, a "published on" line
        if id(t) in holders:
            spared[0] = True      # e.g. an unclosed <nav> swallowed the page: keep its content
            return False
        return True
    drops = _walk(soup, visit)
    return drops, spared[0]


def _link_drops(body: Tag, sizes: _Sizes, max_density: float, holders: set[int]) -> list[Tag]:
    """Blocks that are mostly link text (menus, link lists, related-law sidebars)."""
    def visit(t: Tag) -> bool:
        return (not _drop_protected(t) and id(t) not in holders and t.name != "a"
                and sizes.link_dense(t, max_density))
    return _walk(body, visit) if max_density < 1.0 else []


def _cut(tags: list[Tag], sizes: _Sizes) -> int:
    n = sum(sizes.chars(t) for t in tags)
    for t in tags:
        t.decompose()
    return n


def _pick_root(body: Tag, sizes: _Sizes, cfg: RenderConfig) -> tuple[Tag, str]:
    """The landmark holding the main content, and the rule that chose it; ``body`` if none."""
    total = sizes.chars(body)

    found: dict[str, list[Tag]] = {k: [] for k in ("main", "role=main", "#content", "#main-content",
                                                   "#main", "article")}
    for t in body.descendants:
        if not isinstance(t, Tag):
            continue
        if t.name in ("main", "article"):
            found[t.name].append(t)
        if "role" in t.attrs and _attr(t, "role").strip().lower() == "main":
            found["role=main"].append(t)
        if "id" in t.attrs:
            key = "#" + _attr(t, "id").strip().lower()
            if key in found:
                found[key].append(t)
    for rule, tags in found.items():
        share = cfg.article_share if rule == "article" else 0.5
        if len(tags) == 1 and sizes.chars(tags[0]) >= max(cfg.min_chars, share * total):
            return tags[0], rule
    return body, "body"


def _skipped_siblings(root: Tag, body: Tag, sizes: _Sizes, cfg: RenderConfig) -> list[Tag]:
    """Blocks beside ``root`` (on the way up to body) that are not document sections: short or
    link-heavy blocks, and other <article>s (a citation box, a teaser: self-contained
    compositions that lost to the root)."""
    skip: list[Tag] = []
    node = root
    for _ in range(MAX_DEPTH * 4):
        parent = node.parent
        if parent is None or node is body:
            break
        for sib in parent.contents:
            if sib is node:
                continue
            if isinstance(sib, Tag):
                if (sib.name == "article" or sizes.chars(sib) < cfg.section_min_chars
                        or sizes.link_dense(sib, 0.25)):
                    skip.append(sib)
            elif type(sib) is NavigableString and sib.strip():
                skip.append(sib)
        node = parent
    return skip


# ---- titles ---------------------------------------------------------------------------------
_FILE_NAME = re.compile(r"^[\w.\-~%]+\.(?:x?html?|xml|aspx?|php\d?|jsp|cfm|pdf|docx?|txt|rtf|fmx(?:\.xml)?|do|action)$", re.I)
_CODE = re.compile(r"^[A-Za-z]{0,6}[-_./]?\d[\w\-./]*$")


def _alnum(s: str) -> str:
    return "".join(ch for ch in unicodedata.normalize("NFKC", s).casefold() if ch.isalnum())


def bad_title(title: str, url: str = "", site_names: tuple[str, ...] = ()) -> str:
    """Why ``title`` cannot name the document ('' when it can): empty, a file name, a code, or
    the site's name."""
    t = title.strip()
    if not t:
        return "empty"
    key = _alnum(t)
    if key and any(key == _alnum(n) for n in site_names if n):
        return "site name"
    host = _alnum(urlsplit(url).hostname or "") if url.startswith(("http://", "https://")) else ""
    if key and host and len(key) >= 5 and key in host:
        return "site name"
    if _FILE_NAME.match(t) or (" " not in t and ("_" in t or t.count(".") >= 2) and len(t) >= 6):
        return "file name"
    if " " not in t and _CODE.match(t) and len(t) <= 24:
        return "code"
    return ""


def _metas(soup: BeautifulSoup) -> dict[str, str]:
    """<meta property|name=... content=...> of the page's <head> (first 200), keys lower-cased."""
    head = soup.find("head")
    out: dict[str, str] = {}
    if isinstance(head, Tag):
        for m in head.find_all("meta", limit=200):
            key = (_attr(m, "property") or _attr(m, "name")).strip().lower()
            v = _WS.sub(" ", _attr(m, "content")[:2000]).strip()
            if key and v:
                out.setdefault(key, v[:300])
    return out


def _title_line(root: Tag, sizes: _Sizes) -> str:
    """The document's own title line: the first short block near the top of the content that
    is a heading, a classed title, centred, or all bold."""
    seen = 0
    for t in root.find_all(["h1", "h2", "p", "div", "td", "span", "center"], limit=400):
        n = sizes.chars(t)
        if n == 0:
            continue
        seen += 1
        if seen > 40:
            break
        if not 8 <= n <= 300 or t.find(["p", "div", "table", "ul", "ol", "h1", "h2", "h3"]) is not None:
            continue
        cls = _attr(t, "class")
        bold = t.find(["b", "strong"])
        centred = _attr(t, "align").lower() == "center" or "center" in _attr(t, "style").replace(" ", "").lower()
        all_bold = isinstance(bold, Tag) and sizes.chars(bold) >= 0.9 * n
        if (t.name in ("h1", "h2") or _TITLE_CLASS.search(cls) or t.name == "center"
                or (centred and all_bold) or (all_bold and t.name == "p")):
            return _WS.sub(" ", t.get_text(" ")).strip()
    return ""


def _choose_title(raw: str, og_title: str, site_names: tuple[str, ...], root: Tag, body: Tag,
                  sizes: _Sizes, url: str) -> tuple[str, str]:
    if raw and not bad_title(raw, url, site_names):
        return raw, "title"
    if og_title and not bad_title(og_title, url, site_names):
        return og_title, "og:title"
    for scope in (root, body):
        h1 = scope.find("h1")
        if isinstance(h1, Tag):
            t = _WS.sub(" ", h1.get_text(" ")).strip()
            if t and not bad_title(t, url, site_names):
                return t, "h1"
    line = _title_line(root, sizes)
    if line:
        return line, "title-line"
    if raw:
        return raw, "title"
    return url or "untitled", "url"


# ---- extraction -----------------------------------------------------------------------------

def extract_main(html: bytes | str, url: str = "", cfg: RenderConfig | None = None) -> MainContent:
    """Main content of one HTML page as safe XHTML + plain text (pure; never raises on bad HTML,
    except :class:`TooComplex` for a page with more than ``max_elements`` start tags once
    scripts, styles and comments are cut)."""
    cfg = cfg or RenderConfig()
    text = clean_text(decode_saved_page(html))
    content = _extract(text, url, cfg, lenient=False)
    if content.chars < cfg.min_chars and content.chrome_chars > 0:
        # Broken markup can leave the whole page inside an unclosed <nav>/<header>: keep the
        # structural chrome rather than lose the page (scripts, styles, hidden still go).
        alt = _extract(text, url, cfg, lenient=True)
        if alt.chars > content.chars:
            content = alt
    return content


def _extract(text: str, url: str, cfg: RenderConfig, lenient: bool) -> MainContent:
    text = _cut_raw_text(text, keep_title=True)
    title_m = _TITLE.search(text)
    raw_title = _fragment_text(htmlmod.unescape(title_m.group(1)))[:300] if title_m else ""
    text = strip_comments(_cut_raw_text(text))
    n = element_count(text)
    if n > cfg.max_elements:
        raise TooComplex(f"{n} start tags > render.max_elements={cfg.max_elements}")
    soup = BeautifulSoup(text, "lxml")
    lang = ""
    html_tag = soup.find("html")
    if isinstance(html_tag, Tag):
        lang = _attr(html_tag, "lang").strip()[:20]
    metas = _metas(soup)
    og_title = next((metas[k] for k in ("og:title", "dc.title", "citation_title") if k in metas), "")
    site_names = (metas.get("og:site_name", ""), metas.get("application-name", ""))

    # Comments, CDATA, doctype and processing instructions are skipped by the converter (it
    # only takes plain NavigableStrings); junk and hidden elements go first (what is left is
    # what a browser shows), then chrome, then link lists.
    for t in _junk_drops(soup):
        t.decompose()
    body = soup.find("body") or soup
    sizes = _Sizes(body)
    visible = sizes.chars(body)
    chrome = 0
    spared = False
    if not lenient:
        pattern = re.compile(cfg.chrome_pattern, re.I) if cfg.chrome_pattern else None
        holders = _main_holders(soup)
        drops, spared = _chrome_drops(soup, pattern, sizes, holders)
        chrome += _cut(drops, sizes)
        sizes = _Sizes(body)
        chrome += _cut(_link_drops(body, sizes, cfg.max_link_density, holders), sizes)
        sizes = _Sizes(body)
    found = _count_headings(body, sizes)
    root, rule = _pick_root(body, sizes, cfg)
    outside = 0
    if root is not body:
        skipped = _skipped_siblings(root, body, sizes, cfg)
        kept_beside = sizes.chars(body) - sizes.chars(root) - sum(
            sizes.chars(s) if isinstance(s, Tag) else nonspace_chars(s) for s in skipped)
        for s in skipped:
            n = sizes.chars(s) if isinstance(s, Tag) else nonspace_chars(s)
            if isinstance(s, Tag) and s.name == "article":
                chrome += n     # an explicit composition of its own, judged not the document
            else:
                outside += n
            s.extract()
        if kept_beside > 0:
            rule += "+sections"
        sizes = _Sizes(body)
        top = body
    else:
        top = body
    title, title_source = _choose_title(raw_title, og_title, site_names, root, body, sizes, url)

    conv = _Converter(cfg.link_urls, sizes)
    conv.block(top, 0)
    content = MainContent(title=title[:300], body_xhtml=conv.result(), text=conv.plain(), root=rule,
                          lang=lang, visible_chars=visible, chrome_chars=chrome, outside_chars=outside,
                          sections_found=found, sections_kept=conv.headings, title_source=title_source)
    if spared or lenient:
        content.root += "+lenient"
    return content


def _block_heading(t: Tag, sizes: _Sizes) -> tuple[int, bool]:
    """(heading level, found by its legal text) of a short <p>/<div> block; level 0: not a
    heading. A heading is a legal heading by its text, or a classed title paragraph."""
    n = sizes.chars(t)
    if not 0 < n <= MAX_HEADING_CHARS or sizes.has_blocks(t):
        return 0, False
    txt = _WS.sub(" ", t.get_text(" ")).strip()
    hit = legal_heading(txt)
    if hit:
        return hit[0], True
    cls = _attr(t, "class")
    if (cls and _TITLE_CLASS.search(cls) and not txt.endswith(_SENTENCE_END) and len(txt.split()) <= 25
            and not (CJK_FONT_RUN.search(txt) and len(txt) > 60) and not split_article_label(txt)
            and not _in_table_cell(t)):
        return next((level for rx, level in _CLASS_LEVEL if rx.search(cls)), 4), False
    return 0, False


def _merged_lines(t: Tag, sizes: _Sizes, legal: bool) -> list[tuple[Tag, Tag]]:
    """(sibling to skip, element whose text goes in) for each line merged into heading ``t``: the
    title line after a legal heading, or the same-class title lines after a classed one."""
    if legal:
        found = _title_line_after(t, sizes)
        return [found] if found is not None else []
    return [(x, x) for x in _same_class_lines(t, sizes)]


def _in_table_cell(t: Tag, up: int = 4) -> bool:
    node = t.parent
    for _ in range(up):
        if node is None:
            return False
        if node.name in ("td", "th"):
            return True
        node = node.parent
    return False


def _same_class_lines(t: Tag, sizes: _Sizes) -> list[Tag]:
    """Title lines right after classed title ``t`` with the same class (EUR-Lex sets the document
    title as four ``oj-doc-ti`` paragraphs): one heading, not four."""
    out: list[Tag] = []
    cls = _attr(t, "class")
    nx = _next_tag(t)
    while (nx is not None and len(out) < 8 and nx.name == t.name and _attr(nx, "class") == cls
           and 0 < sizes.chars(nx) <= MAX_HEADING_CHARS and not sizes.has_blocks(nx)
           and not legal_heading(_WS.sub(" ", nx.get_text(" ")).strip())):
        out.append(nx)
        nx = _next_tag(nx)
    return out


def _next_tag(n: Tag) -> Tag | None:
    """The next sibling element, over whitespace (None when text or nothing comes next)."""
    nx = n.next_sibling
    for _ in range(5):
        if nx is None or isinstance(nx, Tag) or str(nx).strip():
            break
        nx = nx.next_sibling
    return nx if isinstance(nx, Tag) else None


def _only_child(t: Tag) -> Tag | None:
    kids = [c for c in t.contents if isinstance(c, Tag) or str(c).strip()]
    return kids[0] if len(kids) == 1 and isinstance(kids[0], Tag) else None


def _title_line_after(n: Tag, sizes: _Sizes) -> tuple[Tag, Tag] | None:
    """The short title line right after legal heading ``n`` ("Record-keeping"), if there is one:
    (the sibling to consume, the element whose text it is -- EUR-Lex wraps the line in a
    ``<div class="eli-title">``)."""
    outer = _next_tag(n)
    nx = outer
    for _ in range(3):
        if nx is None or nx.name != "div" or not sizes.has_blocks(nx):
            break
        nx = _only_child(nx)
    if outer is None or not isinstance(nx, Tag) or nx.name not in ("p", "div", "center"):
        return None
    k = sizes.chars(nx)
    if not 0 < k <= 150 or sizes.has_blocks(nx):
        return None
    txt = _WS.sub(" ", nx.get_text(" ")).strip()
    if legal_heading(txt) or split_article_label(txt):
        return None
    classed = bool(_TITLE_CLASS.search(_attr(nx, "class")))
    if not (classed and not txt.endswith(_SENTENCE_END)) and not _short_title(txt):
        return None
    return outer, nx


_SENTENCE_END = (".", ";", ":", ",", "。", "；", "：", "，", "．")


def _short_title(txt: str) -> bool:
    """A title line, not a sentence: no closing punctuation, at most 12 words (30 characters of
    CJK text, which has no spaces)."""
    if txt.endswith(_SENTENCE_END):
        return False
    if CJK_FONT_RUN.search(txt) and len(txt) > 30:
        return False
    return len(txt.split()) <= 12


def _count_headings(body: Tag, sizes: _Sizes) -> int:
    """Headings in the main text, counted the way the converter emits them (a title line merged
    into its legal heading is not a heading of its own)."""
    n = 0
    merged: set[int] = set()
    for t in body.descendants:
        if not isinstance(t, Tag) or t.name not in ("h1", "h2", "h3", "h4", "h5", "h6", "p", "div", "center"):
            continue
        if id(t) in merged:
            continue
        if t.name in HEADINGS:
            n += sizes.chars(t) > 0
        elif (hit := _block_heading(t, sizes))[0]:
            n += 1
            for outer, inner in _merged_lines(t, sizes, hit[1]):
                merged.update((id(outer), id(inner)))
        elif (t.name in ("p", "div") and sizes.chars(t) and not sizes.has_blocks(t)
              and split_article_label(_lead_text(t))):
            n += 1
    return n


def _fragment_text(s: str) -> str:
    """Plain text of a markup fragment (titles), junk elements removed."""
    if "<" not in s:
        return _WS.sub(" ", s).strip()
    frag = BeautifulSoup(_cut_raw_text(s), "lxml")
    for t in _junk_drops(frag):
        t.decompose()
    return _WS.sub(" ", " ".join(str(x) for x in frag.find_all(string=True)
                                 if type(x) is NavigableString)).strip()


class _Converter:
    """Rebuild a BeautifulSoup subtree as whitelisted XHTML. Recursion is capped at MAX_DEPTH;
    anything deeper is flattened to its text. Only plain NavigableStrings become text (comments,
    CDATA, doctypes and processing instructions are skipped)."""

    def __init__(self, link_urls: bool, sizes: _Sizes):
        self.out: list[str] = []
        self.text: list[str] = []
        self.link_urls = link_urls
        self.sizes = sizes
        self.headings = 0                 # headings emitted (sections kept)
        self.consumed: set[int] = set()   # title lines merged into the heading before them
        self._strip: str | None = None    # article label still to cut from the next text

    def result(self) -> str:
        return "".join(self.out)

    def plain(self) -> str:
        return _WS.sub(" ", " ".join(self.text)).strip()

    # -- text ---------------------------------------------------------------------------------
    def _emit_text(self, s: str, pre: bool = False) -> None:
        s = clean_text(s)
        if not pre:
            s = _WS.sub(" ", s)
        if self._strip and s.strip():
            s = self._cut_label(s)
        if not s:
            return
        self.text.append(s)
        self.out.append(break_long_runs(cjk_wrap(htmlmod.escape(s, quote=False))))

    def _cut_label(self, s: str) -> str:
        """Cut the article label (already emitted as a heading) from the start of the text."""
        want, i = self._strip or "", 0
        while want and i < len(s):
            if s[i].isspace():
                i += 1
            elif s[i] == want[0]:
                want, i = want[1:], i + 1
            else:
                break
        self._strip = want or None
        if want and i < len(s):
            self._strip = None        # the text did not start with the label after all
        return s[i:].lstrip(" \u3000\xa0-–—") if i else s

    def _flat_text(self, node: Tag) -> None:
        parts = [str(s) for s in node.find_all(string=True) if type(s) is NavigableString]
        self._emit_text(" ".join(parts))

    # -- structure ----------------------------------------------------------------------------
    def block(self, node: Tag, depth: int) -> None:
        """Children of a container, in order."""
        for child in list(node.children):
            if isinstance(child, Tag) and id(child) in self.consumed:
                continue
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
        elif name in ("p", "div", "center") and self._legal(n, depth):
            return
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
            if self.sizes.has_blocks(n):
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
            if name == "span" and _NUMBER_SPAN.search(_attr(n, "class")):
                self._emit_text(" ")       # "(a)" + "Part 2 imposes": laid out apart by CSS

    # -- legal structure ------------------------------------------------------------------------
    def _legal(self, n: Tag, depth: int) -> bool:
        """Emit ``n`` as a heading (or as an article heading + its text); False if it is neither."""
        level, legal = _block_heading(n, self.sizes)
        if level:
            start = len(self.out)
            self._wrap(f"h{level}", n, depth, inline_only=True)
            if len(self.out) > start:
                for outer, inner in _merged_lines(n, self.sizes, legal):
                    self._merge_line(outer, depth, inner)
            return True
        if n.name not in ("p", "div") or self.sizes.has_blocks(n):
            return False
        split = split_article_label(_lead_text(n))
        if not split:
            return False
        level, label, _ = split
        self.out.append(f"<h{level}>")
        self._emit_text(label)
        self.out.append(f"</h{level}>")
        self.text.append("\n")
        self.headings += 1
        self._strip = "".join(label.split())
        self._wrap("p", n, depth, inline_only=True)
        self._strip = None
        return True

    def _merge_line(self, outer: Tag, depth: int, inner: Tag) -> None:
        """Append ``inner``'s text as a new line of the heading just emitted; skip ``outer`` later."""
        close = self.out.pop()                 # "</hN>" (and its "\n" in text)
        if self.text and self.text[-1] == "\n":
            self.text.pop()
        self.out.append("<br/>")
        self.text.append(" ")
        self._inline_children(inner, depth)
        self.out.append(close)
        self.text.append("\n")
        self.consumed.add(id(outer))

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
        if tag in HEADINGS:
            self.headings += 1
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
        if self._points(rows, depth):
            return
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


    def _points(self, rows: list[Tag], depth: int) -> bool:
        """A table of lettered/numbered points ("(a) | the placing on the market ...") as
        indented paragraphs; False (nothing emitted) when it is a real table."""
        if not rows or len(rows) > 500:
            return False
        pairs = []
        for r in rows:
            cells = r.find_all(["td", "th"], recursive=False)
            if not cells:
                continue
            if len(cells) != 2 or cells[0].name != "td":
                return False
            label = _WS.sub(" ", cells[0].get_text(" ")).strip() if self.sizes.chars(cells[0]) <= 8 else "?" * 9
            if not _POINT_LABEL.match(label):
                return False
            pairs.append((label, cells[1]))
        if not pairs:
            return False
        for label, cell in pairs:
            self.out.append('<div class="pt">')
            kids = [c for c in cell.children if isinstance(c, Tag) or str(c).strip()]
            first = kids[0] if kids else None
            self.out.append("<p>")
            self._emit_text(label + " ")
            i = 0
            if isinstance(first, Tag) and first.name == "p":
                self._inline_children(first, depth + 2)
                i = 1
            else:
                while i < len(kids) and not (isinstance(kids[i], Tag) and kids[i].name in BLOCK_TAGS
                                             and kids[i].name != "br"):
                    self.node(kids[i], depth + 2)
                    i += 1
            rest = kids[i:]
            self.out.append("</p>")
            self.text.append("\n")
            for k in rest:
                self.node(k, depth + 2)
            self.out.append("</div>")
        return True


def _lead_text(n: Tag, k: int = 80) -> str:
    """The first ``k`` characters of an element's text (without reading all of a huge one)."""
    parts: list[str] = []
    size = 0
    for s in n.descendants:
        if type(s) is NavigableString:
            parts.append(str(s))
            size += len(s)
            if size >= k:
                break
    return _WS.sub(" ", " ".join(parts)).strip()[:k + 60]


def break_long_runs(escaped: str) -> str:
    """Zero-width spaces every ``LONG_RUN`` characters inside runs MuPDF could not break (a 5 MB
    word lays out in quadratic time; with break opportunities it is linear). Text extraction
    drops U+200B, so the PDF's text is unchanged."""
    if len(escaped) <= LONG_RUN:
        return escaped
    return _LONG_RUN.sub(lambda m: ZWSP.join(m.group(0)[i:i + LONG_RUN]
                                             for i in range(0, len(m.group(0)), LONG_RUN)), escaped)


def cjk_wrap(escaped: str) -> str:
    """Wrap runs of CJK-font characters of escaped text in ``<span class="cjk">``."""
    return CJK_FONT_RUN.sub(lambda m: f'<span class="cjk">{m.group(0)}</span>', escaped)
