"""corpus.html: main-content extraction and hostile HTML (also laid out as PDFs)."""

from __future__ import annotations

import re
from pathlib import Path

import pymupdf
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policytune.corpus.html import MainContent, RenderConfig, extract_main
from policytune.corpus.pdf import Fonts, render_pdf

REPO = Path(__file__).resolve().parents[3]
SAMPLE_SITE = REPO / "data" / "sample_site"
MARK = "QxZSECRETzq"   # never allowed out of a script/style element

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>Travel &amp; Expenses Policy | Northwind</title>
<style>body {{ color: red }} /* STYLE{m} */</style>
<script>var s = "SCRIPT{m} </scr" + "ipt>"; if (a < b && c > d) {{ x(); }}</script>
</head><body>
<div id="cookie-banner" class="cookie-consent"><p>We use cookies COOKIE{m} to improve things.</p>
  <button>Accept all cookies</button></div>
<a class="skip-link" href="#main">Skip to content</a>
<header class="site-header"><a href="/">Northwind HEADER{m}</a>
  <form role="search"><label>Search FORM{m}</label><input name="q" value="INPUT{m}"><button>Go</button></form>
</header>
<nav aria-label="Main"><ul><li><a href="/hr">HR NAV{m}</a></li><li><a href="/ai">AI</a></li></ul></nav>
<main id="main">
  <h1>Travel &amp; Expenses Policy</h1>
  <p>Owner: <strong>Chief Financial Officer</strong>. Applies to everyone travelling on
     <a href="https://northwind.example/business">company business</a>.</p>
  <h2>1. Booking travel</h2>
  <ul><li>Rail: standard class only.</li><li>Hotels: at most €180 per night in Zürich.</li></ul>
  <h2>2. Meal allowances</h2>
  <table><tr><th>Meal</th><th>Limit (EUR)</th></tr><tr><td>Dinner</td><td>45</td></tr></table>
  <blockquote>Spend company money as if it were your own.</blockquote>
  <div hidden>HIDDEN{m}</div><div style="display: none">HIDDEN2{m}</div>
  <noscript>NOSCRIPT{m}</noscript><template><p>TEMPLATE{m}</p></template>
  <iframe src="x">IFRAME{m}</iframe><svg><text>SVG{m}</text></svg>
</main>
<aside>Related ASIDE{m}</aside>
<footer><p>© 2025 Northwind FOOTER{m}</p></footer>
<script>track("SCRIPT2{m}")</script>
</body></html>
""".format(m=MARK)


@pytest.fixture(scope="module")
def fonts():
    return Fonts(RenderConfig())


def pdf_text(data: bytes) -> str:
    with pymupdf.open("pdf", data) as doc:
        return "\n".join(p.get_text() for p in doc)



# ---------------------------------------------------------------------------------------------
# main-content extraction
# ---------------------------------------------------------------------------------------------

def test_main_content_drops_chrome_keeps_content():
    c = extract_main(PAGE, "https://northwind.example/travel")
    assert c.root == "main"
    assert c.title == "Travel & Expenses Policy | Northwind"
    for kept in ("Travel & Expenses Policy", "1. Booking travel", "Chief Financial Officer",
                 "company business", "Rail: standard class only.", "€180 per night in Zürich",
                 "Meal", "Limit (EUR)", "Dinner", "45", "Spend company money"):
        assert kept in c.text, kept
    assert MARK not in c.text and MARK not in c.body_xhtml
    assert "cookies" not in c.text and "Skip to content" not in c.text
    # structure survives as whitelisted XHTML; links keep their text, never their target
    for tag in ("<h1>", "<h2>", "<ul>", "<li>", "<table>", "<th>", "<td>", "<blockquote>", "<b>"):
        assert tag in c.body_xhtml, tag
    assert "href" not in c.body_xhtml and "northwind.example/business" not in c.body_xhtml
    linked = extract_main(PAGE, "u", RenderConfig(link_urls=True))
    assert "company business (https://northwind.example/business)" in linked.text


def test_root_selection_rules():
    filler = "<p>" + "Policy text with enough words to count as content. " * 5 + "</p>"
    assert extract_main(f"<body><div>nav junk</div><article><h1>A</h1>{filler}</article></body>").root == "article"
    assert extract_main(f"<body><div role='main'>{filler}</div></body>").root == "role=main"
    assert extract_main(f"<body><div id='content'>{filler}</div><div>x</div></body>").root == "#content"
    # no landmark: the whole body minus chrome (no "densest block" cut that drops sibling blocks)
    c = extract_main(f"<body><div class='wrap'><div class='col'>{filler}</div><div>tiny</div></div></body>")
    assert c.root == "body" and "Policy text" in c.text and "tiny" in c.text
    # a small <article> (a citation box) does not win over the real content
    cite = "<article><p>Cite as: Agency guidance 2024/12, published 3 May 2024, retrieved online.</p></article>"
    c = extract_main(f"<body><div id='content'><h2>Scope</h2>{filler}{filler}</div>{cite}</body>")
    assert c.root.startswith("#content") and c.text.count("Policy text") == 10
    # an article's own <header> holds its heading and is kept
    c = extract_main(f"<body><header>Site</header><article><header><h1>Leave</h1></header>{filler}</article></body>")
    assert "Leave" in c.text and "Site" not in c.text


def test_unclosed_chrome_does_not_swallow_the_page():
    c = extract_main("<body><nav><a href=/>Home</a><h1>Leave policy</h1>"
                       "<p>Staff get 27 days of annual leave per calendar year.</p>")
    assert "27 days of annual leave" in c.text and c.root.endswith("+lenient")


def test_legacy_charset_bytes_are_decoded():
    html = ('<html><head><meta charset="windows-1252"><title>Caf\xe9</title></head>'
            '<body><main><p>Na\xefve € 100 for the caf\xe9 budget.</p></main></body></html>').encode("cp1252")
    c = extract_main(html)
    assert c.title == "Café" and "Naïve € 100 for the café budget." in c.text


@pytest.mark.skipif(not SAMPLE_SITE.is_dir(), reason="sample site not present")
def test_sample_site_pages_lose_their_chrome():
    pages = sorted(SAMPLE_SITE.rglob("*.html"))
    assert pages
    for page in pages:
        c = extract_main(page.read_bytes(), str(page))
        assert c.chars >= 200, page
        low = c.text.lower()
        assert "accept all cookies" not in low and "skip to content" not in low, page
        assert "corvaletrack" not in low and "datalayer" not in low, page


# ---------------------------------------------------------------------------------------------
# hostile HTML (hypothesis)
# ---------------------------------------------------------------------------------------------

TAGS = ["div", "p", "span", "a", "b", "i", "ul", "ol", "li", "table", "tr", "td", "th", "thead",
        "h1", "h2", "h3", "pre", "code", "blockquote", "br", "hr", "main", "article", "section",
        "nav", "header", "footer", "aside", "form", "input", "button", "select", "option",
        "textarea", "label", "iframe", "svg", "math", "noscript", "template", "title", "head",
        "body", "html", "img", "font", "center", "xmp", "plaintext", "dl", "dt", "dd", "o:p",
        "my-widget", "caption", "colgroup", "frameset", "object", "marquee"]
ATTRS = ["class", "id", "style", "hidden", "role", "aria-hidden", "aria-label", "href", "colspan",
         "rowspan", "onload", "src", "lang", "x"]
JUNK_TEXT = st.sampled_from(["<", ">", "&", "&amp;", "&#0;", "&#x110000;", "&nbsp;", "\x00", "\ufffe",
                             "\ud800", "</", "<!--", "-->", "]]>", "<![CDATA[", "'", '"', "\u202e",
                             "人工知能", "é", "\r\n", "<?", "?>", "</p", "<p", "=", "/>", "\\"])
TEXT = st.lists(st.one_of(st.text(max_size=12), JUNK_TEXT), max_size=6).map("".join)
attr_value = st.one_of(TEXT, st.sampled_from(["display:none", "cookie-banner", "main", "content",
                                              "presentation", "true", "3", "999999"]),
                       st.integers(1, 4).map(lambda n: "x" * (5_000 * n)))   # 2 MB: see test_pathological_inputs
attrs = st.lists(st.tuples(st.sampled_from(ATTRS), attr_value), max_size=3).map(
    lambda kv: "".join(f' {k}="{v.replace(chr(34), "")}"' for k, v in kv))


def _raw_ok(s: str, end: str) -> str:
    # Script/style text cannot contain its own end tag (that would end the element per HTML).
    return s if end not in s.lower() else s.lower().replace(end, "")


raw_text = st.lists(st.one_of(st.text(max_size=8), st.sampled_from(
    ["</scr", "</sty", "<!--", "-->", "<script>", "<style>", "</ script>", "<\\/script>", "]]>",
     "<![CDATA[", "\x00", "'", '"', "`", "</scrip t>", "</p>", "<p>", "</title>", "</noscript>"])),
    max_size=6).map("".join)


@st.composite
def raw_element(draw):
    kind = draw(st.sampled_from(["script", "style", "SCRIPT", "Style"]))
    before, after = draw(raw_text), draw(raw_text)
    body = _raw_ok(before + MARK + after, f"</{kind.lower()}")
    closed = draw(st.booleans())
    return f"<{kind}{draw(attrs)}>{body}" + (f"</{kind}>" if closed else "")


def tag_soup(depth: int = 3):
    leaf = st.one_of(TEXT, raw_element(), st.sampled_from(["<!-- c -->", "<![CDATA[x]]>", "<!DOCTYPE x>",
                                                          "<?php x ?>", "</div>", "</table>", "<p>", "<li>"]))

    def extend(children):
        @st.composite
        def element(draw):
            tag = draw(st.sampled_from(TAGS))
            inner = "".join(draw(st.lists(children, max_size=4)))
            closing = draw(st.sampled_from(["", f"</{tag}>", f"</{tag}>", f"</{tag.upper()}>"]))
            return f"<{tag}{draw(attrs)}>{inner}{closing}"
        return element()

    return st.recursive(leaf, extend, max_leaves=25).map(lambda x: x if isinstance(x, str) else "".join(x))


HYP = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                       HealthCheck.data_too_large])


def _check(c: MainContent) -> None:
    assert MARK not in c.text and MARK not in c.body_xhtml and MARK not in c.title
    # the XHTML we hand to MuPDF holds our whitelisted tags and attributes, nothing else
    rest = SAFE_TAG.sub("", c.body_xhtml)
    assert "<" not in rest and ">" not in rest, rest[:200]


SAFE_TAG = re.compile(r'</?(?:h[1-6]|p|div|ul|ol|li|table|tr|td|th|blockquote|pre|b|i|u|sub|sup|code|small|q|dd|span)'
                      r'(?: class="(?:cjk|hr|pt)"| (?:colspan|rowspan)="\d+")*>|<br/>')


@HYP
@given(st.lists(tag_soup(), min_size=1, max_size=5).map("".join))
def test_hostile_tag_soup_never_crashes_or_leaks_script(html):
    _check(extract_main(html, "u"))


@HYP
@given(st.lists(st.one_of(raw_element(), TEXT), min_size=1, max_size=6).map("".join),
       st.sampled_from(["utf-8", "utf-16", "cp1252", "shift_jis", "latin-1", "utf-32", "gb18030"]))
def test_odd_encodings_never_crash_or_leak(body, codec):
    html = f'<html><head><meta charset="{codec}"></head><body>{body}</body></html>'
    _check(extract_main(html.encode(codec, errors="ignore"), "u"))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(tag_soup(), min_size=1, max_size=5).map("".join))
def test_hostile_html_renders_to_a_pdf(fonts, html):
    cfg = RenderConfig(min_chars=0)
    c = extract_main(html, "u", cfg)
    data, pages = render_pdf(c, "u", cfg, fonts)
    assert pages >= 1
    assert MARK not in pdf_text(data)


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_never_crash(data):
    extract_main(data, "u")


@pytest.mark.parametrize("html", [
    "<div>" * 5000 + "deep text" + "</div>" * 5000,
    "<p>" + "<b>" * 3000 + "bold",
    "<ul><li>" * 1500 + "item",
    "<table><tr><td>" * 300 + "cell",
    f'<p class="{"a" * 2_000_000}">x</p>',
    f"<script>{MARK}", f"<style>{MARK}</style", f"<svg><script>{MARK}</script></svg>",
    f"<title><script>{MARK}</script></title>", f"<xmp><script>{MARK}</script></xmp>",
    f"<p>a</p><plaintext><script>{MARK}</script>", f"<textarea><script>{MARK}</script></textarea>",
    f'<script>var x = "</scr" + "ipt>{MARK}";</script>', f"<!-- <script> -->{MARK}-->",
    "\x00" * 100, "", "   \n\t  ", "<![CDATA[", "<!--", "<",
])
def test_pathological_inputs(html):
    _check(extract_main(html, "u"))

