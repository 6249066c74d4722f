"""policytune.corpus.charset: decoding of fetched HTML bytes (BOM, header, <meta>, detector)
and the utf-8 re-declaration of saved pages."""

from __future__ import annotations

from policytune.corpus.charset import as_utf8_html, decode_html, decode_html_ex
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


def test_decode_undeclared_legacy_bytes_uses_detector():
    body = ("<html><body><p>" + "Les d\u00e9penses de caf\u00e9 et de repas sont rembours\u00e9es "
            "apr\u00e8s validation par le responsable hi\u00e9rarchique. " * 8
            + "</p></body></html>").encode("cp1252")
    text, enc, source = decode_html_ex(body, {})
    assert source == "detected" and "rembours\u00e9es" in text and "\ufffd" not in text


def test_decode_never_raises_on_garbage():
    for blob in (b"", b"\xff\xfe\x00", bytes(range(256)), b"<meta charset=x-nonsense>\x81\x8d"):
        text, enc = decode_html(blob, {"Content-Type": "text/html; charset=\x00"})
        assert isinstance(text, str) and enc


def test_saved_html_declares_utf8():
    out = as_utf8_html('<?xml version="1.0" encoding="ISO-8859-1"?><html><head>'
                         '<meta http-equiv="content-type" content="text/html; charset=iso-8859-1">'
                         "</head></html>")
    assert "iso-8859-1" not in out.lower() and out.count("utf-8") == 2
