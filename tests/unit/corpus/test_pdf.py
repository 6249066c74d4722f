"""corpus.pdf: fonts, title/source header, determinism."""

from __future__ import annotations

import re

import pymupdf
import pytest

from policytune.corpus.html import RenderConfig, extract_main
from policytune.corpus.pdf import Fonts, render_pdf
from tests.unit.corpus.test_html import MARK, PAGE, pdf_text


@pytest.fixture(scope="module")
def fonts():
    return Fonts(RenderConfig())


def squash(s: str) -> str:
    return re.sub(r"\s+", "", s)


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
    c = extract_main(CJK_PAGE, url)
    data, pages = render_pdf(c, url, RenderConfig(), fonts)
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
    cfg = RenderConfig()
    c = extract_main(CJK_PAGE, "https://x.example/a")
    a, _ = render_pdf(c, "https://x.example/a", cfg, Fonts(cfg))
    b, _ = render_pdf(extract_main(CJK_PAGE, "https://x.example/a"), "https://x.example/a", cfg, Fonts(cfg))
    assert a == b
    with pymupdf.open("pdf", a) as doc:
        assert doc.metadata["title"] == "人工知能の利用方針 — Politique IA"
        assert not doc.metadata["creationDate"] and not doc.metadata["modDate"]


def test_table_and_list_text_reach_the_pdf(fonts):
    c = extract_main(PAGE, "u")
    data, _ = render_pdf(c, "u", RenderConfig(), fonts)
    text = pdf_text(data)
    for s in ("Limit (EUR)", "Dinner", "Rail: standard class only.", "1. Booking travel"):
        assert s in text
    assert MARK not in text and "cookies" not in text

