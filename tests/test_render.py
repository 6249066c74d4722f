"""render: main-content extraction, hostile HTML, fonts, deterministic and incremental PDFs."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pymupdf
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policytune.core import records
from stages import render as R

REPO = Path(__file__).resolve().parent.parent
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
    return R.Fonts(R.RenderConfig())


def pdf_text(data: bytes) -> str:
    with pymupdf.open("pdf", data) as doc:
        return "\n".join(p.get_text() for p in doc)


def squash(s: str) -> str:
    return re.sub(r"\s+", "", s)


# ---------------------------------------------------------------------------------------------
# main-content extraction
# ---------------------------------------------------------------------------------------------

def test_main_content_drops_chrome_keeps_content():
    c = R.extract_main(PAGE, "https://northwind.example/travel")
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
    linked = R.extract_main(PAGE, "u", R.RenderConfig(link_urls=True))
    assert "company business (https://northwind.example/business)" in linked.text


def test_root_selection_rules():
    filler = "<p>" + "Policy text with enough words to count as content. " * 5 + "</p>"
    assert R.extract_main(f"<body><div>nav junk</div><article><h1>A</h1>{filler}</article></body>").root == "article"
    assert R.extract_main(f"<body><div role='main'>{filler}</div></body>").root == "role=main"
    assert R.extract_main(f"<body><div id='content'>{filler}</div><div>x</div></body>").root == "#content"
    c = R.extract_main(f"<body><div class='wrap'><div class='col'>{filler}</div><div>tiny</div></div></body>")
    assert c.root == "densest" and "Policy text" in c.text
    # an article's own <header> holds its heading and is kept
    c = R.extract_main(f"<body><header>Site</header><article><header><h1>Leave</h1></header>{filler}</article></body>")
    assert "Leave" in c.text and "Site" not in c.text


def test_unclosed_chrome_does_not_swallow_the_page():
    c = R.extract_main("<body><nav><a href=/>Home</a><h1>Leave policy</h1>"
                       "<p>Staff get 27 days of annual leave per calendar year.</p>")
    assert "27 days of annual leave" in c.text and c.root.endswith("+lenient")


def test_legacy_charset_bytes_are_decoded():
    html = ('<html><head><meta charset="windows-1252"><title>Caf\xe9</title></head>'
            '<body><main><p>Na\xefve € 100 for the caf\xe9 budget.</p></main></body></html>').encode("cp1252")
    c = R.extract_main(html)
    assert c.title == "Café" and "Naïve € 100 for the café budget." in c.text


@pytest.mark.skipif(not SAMPLE_SITE.is_dir(), reason="sample site not present")
def test_sample_site_pages_lose_their_chrome():
    pages = sorted(SAMPLE_SITE.rglob("*.html"))
    assert pages
    for page in pages:
        c = R.extract_main(page.read_bytes(), str(page))
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


def _check(c: R.MainContent) -> None:
    assert MARK not in c.text and MARK not in c.body_xhtml and MARK not in c.title
    # the XHTML we hand to MuPDF holds our whitelisted tags and attributes, nothing else
    rest = SAFE_TAG.sub("", c.body_xhtml)
    assert "<" not in rest and ">" not in rest, rest[:200]


SAFE_TAG = re.compile(r'</?(?:h[1-6]|p|div|ul|ol|li|table|tr|td|th|blockquote|pre|b|i|u|sub|sup|code|small|q|dd|span)'
                      r'(?: class="(?:cjk|hr)"| (?:colspan|rowspan)="\d+")*>|<br/>')


@HYP
@given(st.lists(tag_soup(), min_size=1, max_size=5).map("".join))
def test_hostile_tag_soup_never_crashes_or_leaks_script(html):
    _check(R.extract_main(html, "u"))


@HYP
@given(st.lists(st.one_of(raw_element(), TEXT), min_size=1, max_size=6).map("".join),
       st.sampled_from(["utf-8", "utf-16", "cp1252", "shift_jis", "latin-1", "utf-32", "gb18030"]))
def test_odd_encodings_never_crash_or_leak(body, codec):
    html = f'<html><head><meta charset="{codec}"></head><body>{body}</body></html>'
    _check(R.extract_main(html.encode(codec, errors="ignore"), "u"))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(tag_soup(), min_size=1, max_size=5).map("".join))
def test_hostile_html_renders_to_a_pdf(fonts, html):
    cfg = R.RenderConfig(min_chars=0)
    c = R.extract_main(html, "u", cfg)
    data, pages = R.render_pdf(c, "u", cfg, fonts)
    assert pages >= 1
    assert MARK not in pdf_text(data)


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_never_crash(data):
    R.extract_main(data, "u")


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
    _check(R.extract_main(html, "u"))


# ---------------------------------------------------------------------------------------------
# PDF: fonts, header, determinism
# ---------------------------------------------------------------------------------------------

CJK_PAGE = """<html lang="ja"><head><title>人工知能の利用方針 — Politique IA</title></head><body>
<article><h1>人工知能（AI）の利用方針</h1>
<p>個人情報を外部のAIサービスに入力してはなりません。违规须在24小时内报告。개인정보 입력 금지.</p>
<p>Résumé : naïve façon, Ærø, Łódź, Straße, Ελληνικά, Русский — l’équipe répond sous 30 jours.</p>
</article></body></html>"""


def test_pdf_has_title_source_and_real_cjk_and_latin_glyphs(fonts):
    url = "https://northwind.example/ja/ai"
    c = R.extract_main(CJK_PAGE, url)
    data, pages = R.render_pdf(c, url, R.RenderConfig(), fonts)
    assert pages == 1
    with pymupdf.open("pdf", data) as doc:
        page = doc[0]
        text = page.get_text()
        # text round-trips (line breaks aside)
        for s in ("人工知能の利用方針 — Politique IA", f"Source: {url}", "個人情報を外部のAIサービスに入力してはなりません。",
                  "违规须在24小时内报告。", "개인정보 입력 금지", "naïve façon, Ærø, Łódź, Straße, Ελληνικά, Русский"):
            assert squash(s) in squash(text), s
        fonts_used = {f[3].split("+")[-1] for f in page.get_fonts()}
        assert any("Noto Sans CJK" in f for f in fonts_used), fonts_used
        assert any("DejaVu" in f for f in fonts_used), fonts_used
        # real glyphs, not blank boxes: the CJK words leave ink on the rendered page
        for word in ("個人情報", "개인정보", "Łódź"):
            rects = page.search_for(word)
            assert rects, word
            pix = page.get_pixmap(dpi=100, clip=rects[0], colorspace=pymupdf.csGRAY)
            dark = sum(1 for v in pix.samples if v < 128)
            assert dark > 20, f"{word!r} rendered no ink"


def test_pdf_bytes_are_deterministic():
    cfg = R.RenderConfig()
    c = R.extract_main(CJK_PAGE, "https://x.example/a")
    a, _ = R.render_pdf(c, "https://x.example/a", cfg, R.Fonts(cfg))
    b, _ = R.render_pdf(R.extract_main(CJK_PAGE, "https://x.example/a"), "https://x.example/a", cfg, R.Fonts(cfg))
    assert a == b
    with pymupdf.open("pdf", a) as doc:
        assert doc.metadata["title"] == "人工知能の利用方針 — Politique IA"
        assert not doc.metadata["creationDate"] and not doc.metadata["modDate"]


def test_table_and_list_text_reach_the_pdf(fonts):
    c = R.extract_main(PAGE, "u")
    data, _ = R.render_pdf(c, "u", R.RenderConfig(), fonts)
    text = pdf_text(data)
    for s in ("Limit (EUR)", "Dinner", "Rail: standard class only.", "1. Booking travel"):
        assert s in text
    assert MARK not in text and "cookies" not in text


# ---------------------------------------------------------------------------------------------
# the stage: incremental, counted rejections
# ---------------------------------------------------------------------------------------------

def _site(base: Path, pages: dict[str, str]) -> list[dict]:
    rows = []
    for name, html in pages.items():
        path = base / "data/raw/pages" / f"{name}.html"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(html, encoding="utf-8")
        rows.append({"url": f"https://northwind.example/{name}", "final_url": f"https://northwind.example/{name}",
                     "status": "ok", "content_type": "text/html", "sha256": records.sha256_text(html),
                     "path": f"data/raw/pages/{name}.html", "error": None})
    return rows


def _doc(n: int) -> str:
    return (f"<html><head><title>Policy {n}</title></head><body><nav>menu</nav><main><h1>Policy {n}</h1>"
            f"<p>Rule {n}: approvals within {n} days by the {n}th committee.</p></main></body></html>")


def test_incremental_rerender_touches_only_the_changed_page(tmp_path, fonts):
    cfg = R.RenderConfig()
    rows = _site(tmp_path, {"a": _doc(1), "b": _doc(2), "c": _doc(3), "empty": "  \n ", "chrome": "<nav>x</nav>"})
    rows.append({"url": "https://northwind.example/gone", "status": "http_404", "path": None})
    man, stats = R.render_pages(rows, tmp_path, "data/pdf", cfg, [], fonts)
    assert stats["pages_in"] == 5 and stats["pdfs"] == 3 and stats["rerendered"] == 5
    assert stats["rejected_by_reason"] == {"empty_content": 2} and stats["skipped_not_ok"] == 1
    assert stats["pdf_pages"] == 3
    ok = {r["url"].rsplit("/", 1)[1]: r for r in man if r["status"] == "ok"}
    for r in ok.values():
        assert r["pdf_path"] == f"data/pdf/{records.stable_id(r['url'])}.pdf"
        assert records.sha256_file(tmp_path / r["pdf_path"]) == r["pdf_sha256"]
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in (tmp_path / "data/pdf").glob("*.pdf")}

    # no change: everything reused, nothing written
    man2, s2 = R.render_pages(rows, tmp_path, "data/pdf", cfg, man, fonts)
    assert (s2["rerendered"], s2["reused"], s2["removed"]) == (0, 5, 0) and man2 == sorted(man, key=lambda r: (r["url"], r["doc_id"]))

    # one page changed, one page gone
    rows3 = _site(tmp_path, {"a": _doc(1), "b": _doc(22)})
    man3, s3 = R.render_pages(rows3, tmp_path, "data/pdf", cfg, man2, fonts)
    assert (s3["rerendered"], s3["reused"], s3["removed"]) == (1, 1, 1)
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in (tmp_path / "data/pdf").glob("*.pdf")}
    a_pdf, b_pdf, c_pdf = (Path(ok[k]["pdf_path"]).name for k in "abc")
    assert after[a_pdf] == before[a_pdf]
    assert after[b_pdf] != before[b_pdf] and c_pdf not in after

    # a render param change re-renders everything
    _, s4 = R.render_pages(rows3, tmp_path, "data/pdf", dataclasses.replace(cfg, font_size_pt=11.0), man3, fonts)
    assert s4["rerendered"] == 2 and s4["reused"] == 0


def test_main_writes_manifest_and_stats(tmp_path, monkeypatch):
    rows = _site(tmp_path, {"a": _doc(1), "blank": ""})
    records.write_jsonl(tmp_path / "data/raw/manifest.jsonl", rows)
    (tmp_path / "params.yaml").write_text("render:\n  page_size: A4\n  font_size_pt: 10\n")
    monkeypatch.chdir(tmp_path)
    assert R.main() == 0
    stats = records.read_json("data/stats/render.json")
    assert {"pages_in", "pdfs", "rerendered", "reused", "removed", "rejected_by_reason", "pdf_pages"} <= set(stats)
    assert stats["pdfs"] == 1 and stats["rejected_by_reason"] == {"empty_content": 1}
    man = records.read_jsonl("data/pdf/manifest.jsonl")
    assert {r["status"] for r in man} == {"ok", "rejected"}
    assert all({"doc_id", "url", "title", "html_sha256", "pdf_path", "pages", "chars", "status", "error"} <= set(r)
               for r in man)
