"""policytune.corpus.charset: decoding of fetched HTML bytes (BOM, header, <meta> by the WHATWG
label table, UTF-8, the windows-1252 default, the detector as tie-breaker) and the utf-8
re-declaration of saved pages. (Timing on pathological inputs: test_scrape_safety.py.)"""

from __future__ import annotations

import pytest

from policytune.corpus.charset import as_utf8_html, decode_html, decode_html_ex, meta_charset
from tests.unit.corpus.test_scrape import CP1252_HTML


def test_decode_meta_only_windows_1252():
    text, enc = decode_html(CP1252_HTML, {"Content-Type": "text/html"})
    assert enc == "cp1252"
    assert "\u20ac45" in text and "\u2019daily cap\u2019" in text and "\u201cAnnex B\u201d" in text
    text, enc = decode_html(b'<meta charset="windows-1252"><p>\x80 \x93q\x94</p>', {})
    assert (text, enc) == ('<meta charset="windows-1252"><p>\u20ac \u201cq\u201d</p>', "cp1252")


def test_decode_precedence():
    utf8 = "<p>\u20ac caf\u00e9</p>".encode("utf-8")
    # header beats meta
    assert decode_html(b'<meta charset="windows-1252">' + utf8,
                         {"content-type": "text/html; charset=UTF-8"})[1] == "utf-8"
    # BOM beats header (as in browsers)
    assert decode_html(b"\xef\xbb\xbf" + utf8, {"Content-Type": "text/html; charset=iso-8859-1"}) \
        == ("<p>\u20ac caf\u00e9</p>", "utf-8")
    text, enc = decode_html("<p>\u20ac</p>".encode("utf-16"), {})
    assert text == "<p>\u20ac</p>" and enc.startswith("utf-16")
    # latin-1 label means windows-1252 (0x80 is the euro sign, not a C1 control)
    assert decode_html(b"<p>\x80</p>", {"Content-Type": "text/html; charset=ISO-8859-1"}) \
        == ("<p>\u20ac</p>", "cp1252")
    # a wrong header that cannot decode falls through to the <meta>
    assert decode_html(b'<meta charset="windows-1252"><p>\x80</p>',
                         {"Content-Type": "text/html; charset=utf-8"})[1] == "cp1252"
    # unknown labels are ignored; plain UTF-8 without declarations is UTF-8
    assert decode_html(utf8, {"Content-Type": "text/html; charset=bogus-9"}) \
        == ("<p>\u20ac caf\u00e9</p>", "utf-8")


PT = ("<!DOCTYPE html><html><head><title>Pol\u00edtica de prote\u00e7\u00e3o de dados</title>"
      "</head><body><h1>Prote\u00e7\u00e3o da informa\u00e7\u00e3o</h1>"
      + "<p>A prote\u00e7\u00e3o da informa\u00e7\u00e3o \u00e9 obrigat\u00f3ria. N\u00e3o h\u00e1 "
        "exce\u00e7\u00e3o \u00e0 regra: a informa\u00e7\u00e3o pessoal n\u00e3o \u00e9 partilhada sem "
        "autoriza\u00e7\u00e3o, e a comunica\u00e7\u00e3o \u00e9 feita \u00e0 dist\u00e2ncia. "
        "\u00c9 proibido o acesso \u00e0s informa\u00e7\u00f5es de sa\u00fade.</p>" * 12
      + "</body></html>")
JA = ("<html><head><title>\u500b\u4eba\u60c5\u5831\u4fdd\u8b77\u65b9\u91dd</title></head><body>"
      + "<p>\u5f53\u793e\u306f\u3001\u304a\u5ba2\u69d8\u306e\u500b\u4eba\u60c5\u5831\u3092\u9069"
        "\u5207\u306b\u7ba1\u7406\u3057\u3001\u7b2c\u4e09\u8005\u306b\u63d0\u4f9b\u3059\u308b"
        "\u3053\u3068\u306f\u3042\u308a\u307e\u305b\u3093\u3002</p>" * 10 + "</body></html>")
RU = ("<html><head><title>\u041f\u043e\u043b\u0438\u0442\u0438\u043a\u0430 "
      "\u043a\u043e\u043d\u0444\u0438\u0434\u0435\u043d\u0446\u0438\u0430\u043b\u044c\u043d\u043e"
      "\u0441\u0442\u0438</title></head><body>"
      + "<p>\u041c\u044b \u043d\u0435 \u043f\u0435\u0440\u0435\u0434\u0430\u0451\u043c "
        "\u0432\u0430\u0448\u0438 \u043f\u0435\u0440\u0441\u043e\u043d\u0430\u043b\u044c\u043d"
        "\u044b\u0435 \u0434\u0430\u043d\u043d\u044b\u0435 \u0442\u0440\u0435\u0442\u044c\u0438"
        "\u043c \u043b\u0438\u0446\u0430\u043c \u0431\u0435\u0437 \u0441\u043e\u0433\u043b\u0430"
        "\u0441\u0438\u044f.</p>" * 10 + "</body></html>")
ZH = ("<html><body>" + "<p>\u6211\u4eec\u4e0d\u4f1a\u5728\u672a\u7ecf\u60a8\u540c\u610f\u7684"
      "\u60c5\u51b5\u4e0b\u5411\u7b2c\u4e09\u65b9\u63d0\u4f9b\u60a8\u7684\u4e2a\u4eba\u4fe1"
      "\u606f\u3002</p>" * 10 + "</body></html>")


def wrong_chars(got: str, want: str) -> int:
    return sum(a != b for a, b in zip(got, want)) + abs(len(got) - len(want))


def test_undeclared_windows_1252_is_the_default_not_a_guess():
    """No BOM, header or <meta>, not UTF-8: windows-1252, as browsers do. (charset-normalizer
    picks cp1250 for this page and would give 'prote\u00e7\u0103o'.)"""
    body = PT.encode("cp1252")
    text, enc, source = decode_html_ex(body, {"Content-Type": "text/html"})
    assert (enc, source) == ("cp1252", "default")
    assert wrong_chars(text, PT) == 0 and "prote\u00e7\u00e3o" in text and "\u0103" not in text
    fr = ("<html><body><p>" + "Les d\u00e9penses de caf\u00e9 et de repas sont rembours\u00e9es "
          "apr\u00e8s validation par le responsable hi\u00e9rarchique. " * 8 + "</p></body></html>")
    assert decode_html_ex(fr.encode("cp1252"), {}) == (fr, "cp1252", "default")
    # English with smart quotes, dashes, the euro sign: typographic, not mojibake
    en = "<p>The \u201cdaily cap\u201d \u2013 see Annex B \u2014 is \u20ac45\u2026 it\u2019s fine.</p>" * 4
    assert decode_html_ex(en.encode("cp1252"), {}) == (en, "cp1252", "default")


@pytest.mark.parametrize("text,codec", [(JA, "shift_jis"), (RU, "cp1251"), (ZH, "gbk")])
def test_undeclared_cjk_and_cyrillic_pages_are_detected(text, codec):
    """windows-1252 reads these as mojibake (or cannot decode them): the detector breaks
    the tie, and its text is right."""
    decoded, enc, source = decode_html_ex(text.encode(codec), {})
    assert source == "detected", enc
    assert wrong_chars(decoded, text) == 0


def test_labels_follow_the_whatwg_table():
    utf8 = "<p>\u20ac caf\u00e9</p>".encode("utf-8")
    # utf-7 is not a label: ignored in the header and in <meta>; the UTF-8 body is UTF-8
    assert decode_html_ex(utf8, {"Content-Type": "text/html; charset=utf-7"}) == (
        "<p>\u20ac caf\u00e9</p>", "utf-8", "utf-8")
    body = b'<meta charset="utf-7">' + utf8
    assert decode_html_ex(body, {})[1:] == ("utf-8", "utf-8")
    assert meta_charset(b'<meta charset="UTF-7"><meta charset="windows-1252">') == "cp1252"
    # x-user-defined and unknown labels fall through to the next step
    for label in ("x-user-defined", "bogus-9", "replacement", "iso-2022-kr"):
        assert decode_html_ex(utf8, {"Content-Type": f"text/html; charset={label}"})[2] == "utf-8"
        assert meta_charset(f'<meta charset="{label}">'.encode()) is None
    legacy = "<p>caf\u00e9 \u2013 \u20ac5</p>".encode("cp1252")
    assert decode_html_ex(b'<meta charset="x-user-defined">' + legacy, {})[1:] == (
        "cp1252", "default")
    # WHATWG aliases: latin1 / ascii / us-ascii mean windows-1252, shift_jis -> windows-31j
    for label in ("latin1", "ascii", "US-ASCII", "iso_8859-1", "l1", "cp1252"):
        assert decode_html_ex(b"<p>\x80</p>", {"Content-Type": f"text/html; charset={label}"}) \
            == ("<p>\u20ac</p>", "cp1252", "header")
    assert decode_html_ex(JA.encode("shift_jis"), {"content-type": "text/html; charset=Shift_JIS"}) \
        == (JA, "cp932", "header")
    assert meta_charset(b'<meta http-equiv="Content-Type" content="text/html; charset=koi8-r">') \
        == "koi8-r"
    assert meta_charset(b'<meta charset="utf-16le">') == "utf-8"  # a <meta> cannot say UTF-16


def test_decode_never_raises_on_garbage():
    for blob in (b"", b"\xff\xfe\x00", bytes(range(256)), b"<meta charset=x-nonsense>\x81\x8d"):
        text, enc = decode_html(blob, {"Content-Type": "text/html; charset=\x00"})
        assert isinstance(text, str) and enc


def test_saved_html_declares_utf8():
    out = as_utf8_html('<?xml version="1.0" encoding="ISO-8859-1"?><html><head>'
                         '<meta http-equiv="content-type" content="text/html; charset=iso-8859-1">'
                         "</head></html>")
    assert "iso-8859-1" not in out.lower() and out.count("utf-8") == 2
