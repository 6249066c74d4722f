"""policytune.corpus.urls: link extraction and page file names that never leave their folder
(property test)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policytune.corpus.urls import extract_links, safe_filename


def test_extract_links():
    html = ('<base href="/docs/"><a href="x.html#f">x</a><a href="HTTP://Other.org:80">o</a>'
            '<a href="mailto:a@b">m</a><a href="#top">t</a><a href="x.html">dup</a>'
            '<a href="http://[bad">bad</a>')
    assert extract_links(html, "http://h.test/a/b.html") == [
        "http://h.test/docs/x.html", "http://other.org/"]



HOSTILE = ["file:../../etc/passwd", "/etc/passwd", "..", ".", "", "http://x/%2e%2e/%2e%2e/x",
           "C:\\Windows\\system32\\..\\..", "\x00/\x00", "." * 300, "/" * 50, "a/" * 500,
           "http://h/\u202e\u0000..\\..\\", "file:/abs/path.html", "..%2f..%2f", "~/x", "CON"]


def _check_name(name: str, out: Path) -> None:
    assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*-[0-9a-f]{12}\.html", name), name
    assert ".." not in name and len(name.encode()) <= 120
    target = out / name
    assert os.path.normpath(target).startswith(str(out) + os.sep)
    assert target.resolve().parent == out.resolve()


@pytest.mark.parametrize("url", HOSTILE)
def test_safe_filename_hostile_examples(url, tmp_path):
    _check_name(safe_filename(url), tmp_path)


@settings(max_examples=300, deadline=None)
@given(st.one_of(
    st.text(),
    st.builds(lambda a, b: a + b,
              st.sampled_from(["http://", "https://h.test/", "file:", "/", "../", "..\\", "C:\\",
                               "file:../../", "http://h/%2e%2e/", "//"]),
              st.text(alphabet=st.sampled_from(list("./\\%2eE:~ \x00a\u00e9\u202e")) | st.characters(),
                      max_size=400))))
def test_safe_filename_never_escapes(tmp_path_factory, url):
    out = tmp_path_factory.getbasetemp() / "safe_names"
    out.mkdir(exist_ok=True)
    name = safe_filename(url)
    _check_name(name, out)
    assert safe_filename(url) == name  # stable
    (out / name).write_bytes(b"x")  # the file system accepts it, inside the folder
    assert (out / name).is_file()


def test_safe_filename_is_readable_and_unique():
    a = safe_filename("http://127.0.0.1:8000/hr/leave.html")
    assert a.startswith("127.0.0.1_8000_hr_leave-")
    assert a != safe_filename("http://127.0.0.1:8000/hr/leave.html?x=1")
    assert safe_filename("file:data/sample_site/ai/use.html").startswith("data_sample_site_ai_use-")
