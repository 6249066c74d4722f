"""Checks of the data stages against the real-page fixtures (tests/fixtures/real_pages/, issue 14).

Each fixture ``<name>.html`` has an expectations file ``<name>.json``::

    title        the document title a reader expects (a substring of an acceptable title)
    main_text    every passage of the real content (paragraph, point, heading, annex line),
                 verbatim plain text after whitespace normalisation: the ground truth
    nav_text     passages of chrome / navigation that must not reach the chunks
    articles     ordered article / section labels ("Article 12", "第三条", "Art. 5º")
    headings     heading texts expected in the chunks' heading paths ("CHAPTER III", "ANNEX III")
    subheadings  further heading texts, reported but not required (article titles ...)
    points       point texts that must read as running text ("(a) the placing on the market")
    encoding     the page's real encoding where it declares none ("windows-1252"), else absent
    class        the failure class it reproduces (a-h of issue 14), lang: its language

Pure functions, standard library only. ``run_pipeline`` drives the three stage CLIs
(``python -m stages.scrape|render|extract``) as subprocesses whose working directory is a
throw-away folder and whose ``PYTHONPATH`` is the repository under test, so the same driver
measures any checkout (``bench/bench_pages.py`` uses it on older commits too).

Text comparison. Both sides go through :func:`key`: NFKC, casefold, every whitespace character
and every ``|`` removed. PDF text extraction inserts or drops spaces at line joins (between CJK
characters, after hyphens, between inline spans) and joins side-by-side table cells with
`` | ``; none of that is content, so none of it may decide whether a passage survived.
"""

from __future__ import annotations

import bisect
import difflib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import unicodedata
from collections import defaultdict
from pathlib import Path
from typing import Iterable

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "real_pages"

FOUND_SHARE = 0.90          # a passage is found when >= 90% of its characters are matched
GRAM = 8                    # anchor length of the fuzzy passage search
MIN_NAV_KEY = 4             # nav passages shorter than this (after key()) are too ambiguous
MIN_NAV_KEY_CJK = 3         # ... for passages made of CJK characters
MAX_TITLE_CHARS = 400

_WS = re.compile(r"\s+")
_DROP = re.compile(r"[\s|\u00ad\u200b\u200c\u200d\u2060\ufeff]+")
_CJK = re.compile("[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af]")


# --------------------------------------------------------------------------- normalisation
def ws(s: str) -> str:
    """NFKC, whitespace runs collapsed to one space, stripped."""
    return _WS.sub(" ", unicodedata.normalize("NFKC", s)).strip()


def key(s: str) -> str:
    """Comparison key: NFKC, casefold, no whitespace, no ``|`` (table-cell joins), no soft
    hyphens / zero-width characters; non-breaking hyphen as '-'."""
    s = unicodedata.normalize("NFKC", s).replace("\u2011", "-").casefold()
    return _DROP.sub("", s)


def nonspace_len(s: str) -> int:
    return len(key(s))


# --------------------------------------------------------------------------- expectations
def load_expectations(name_or_path: str | Path) -> dict:
    p = Path(name_or_path)
    if p.suffix != ".json":
        p = (FIXTURES / p.name).with_suffix(".json") if not p.is_absolute() else p.with_suffix(".json")
    exp = json.loads(p.read_text(encoding="utf-8"))
    exp.setdefault("name", p.stem)
    for k in ("main_text", "nav_text", "articles", "headings", "subheadings", "points"):
        exp.setdefault(k, [])
    return exp


def fixture_names(folder: Path = FIXTURES) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.json") if (folder / f"{p.stem}.html").is_file())


# --------------------------------------------------------------------------- chunk text
def doc_text(chunks: list[dict]) -> str:
    """The text the chunks of one document cover, in order, overlaps counted once.

    Chunks carrying ``page``/``char_start``/``char_end`` (stages/extract.py) are merged per page
    by their spans: a chunk that starts inside the previous one adds only its tail, so the
    ``overlap_tokens`` a chunk repeats are not counted twice. Chunks without spans are
    concatenated in their order. Chunks are separated by newlines."""
    if chunks and all(isinstance(c.get("char_start"), int) and isinstance(c.get("char_end"), int)
                      and c.get("page") is not None for c in chunks):
        out: list[str] = []
        order = sorted(range(len(chunks)), key=lambda i: (chunks[i]["page"], chunks[i]["char_start"], i))
        page, end = None, -1
        for i in order:
            c = chunks[i]
            text, cs = c["text"], c["char_start"]
            if c["page"] != page:
                page, end = c["page"], -1
            if cs < end:
                text = text[end - cs:] if end - cs < len(text) else ""
                if text:
                    out.append(text)
            else:
                out.append("\n" + text if out else text)
            end = max(end, c["char_end"])
        return "".join(out)
    return "\n".join(c.get("text", "") for c in chunks)


class Haystack:
    """Key of a document's chunk text with an anchor index for the fuzzy passage search."""

    def __init__(self, text: str):
        self.text = key(text)
        self._index: dict[str, list[int]] | None = None

    @property
    def index(self) -> dict[str, list[int]]:
        if self._index is None:
            idx: dict[str, list[int]] = defaultdict(list)
            t = self.text
            for i in range(0, max(0, len(t) - GRAM + 1)):
                idx[t[i:i + GRAM]].append(i)
            self._index = idx
        return self._index

    def coverage(self, passage_key: str) -> float:
        """Share of the passage's characters matched in the haystack (1.0: verbatim).

        Exact substring first; else the passage's 8-character anchors vote for an alignment
        offset, and difflib matches the passage against a window around the best one (bounded
        cost: O(len(passage)^2) per passage, never the whole haystack). Matching blocks shorter
        than 3 characters do not count."""
        p = passage_key
        if not p:
            return 1.0
        if p in self.text:
            return 1.0
        if len(p) < GRAM:
            return 0.0
        votes: dict[int, int] = defaultdict(int)
        step = 1 if len(p) < 400 else 2
        for j in range(0, len(p) - GRAM + 1, step):
            for i in self.index.get(p[j:j + GRAM], ())[:50]:
                votes[i - j] += 1
        if not votes:
            return 0.0
        best = 0.0
        for off, _ in sorted(votes.items(), key=lambda kv: -kv[1])[:3]:
            lo = max(0, off - len(p) // 4)
            window = self.text[lo:off + len(p) + len(p) // 4]
            sm = difflib.SequenceMatcher(None, p, window, autojunk=False)
            hit = sum(b.size for b in sm.get_matching_blocks() if b.size >= 3)
            best = max(best, hit / len(p))
        return best


# --------------------------------------------------------------------------- metrics
def retention(main_text: list[str], chunks: list[dict], hay: Haystack | None = None) -> tuple[float, list[str]]:
    """Share of main_text characters (non-space, NFKC) whose passage is found in the chunks
    (coverage >= 90%); and the passages not found, for diagnostics."""
    hay = hay or Haystack(doc_text(chunks))
    total = found = 0
    missing = []
    for passage in main_text:
        k = key(passage)
        total += len(k)
        if hay.coverage(k) >= FOUND_SHARE:
            found += len(k)
        else:
            missing.append(passage)
    return (found / total if total else 1.0), missing


def usable_nav(nav_text: list[str], main_text: list[str]) -> list[str]:
    """The nav passages that can be told apart from the content: at least MIN_NAV_KEY characters
    (MIN_NAV_KEY_CJK for CJK) and not occurring inside the main text (a menu link "Privacy" says
    nothing when the act has a "Part 2—Privacy")."""
    main = "\n".join(key(m) for m in main_text)
    out = []
    for n in nav_text:
        k = key(n)
        need = MIN_NAV_KEY_CJK if _CJK.search(k) else MIN_NAV_KEY
        if len(k) >= need and k not in main:
            out.append(k)
    return out


def nav_share(nav_text: list[str], main_text: list[str], chunks: list[dict],
              hay: Haystack | None = None) -> float:
    """Share of chunk characters (non-space) that come from nav_text passages: every occurrence
    of every usable nav passage (see ``usable_nav``) in the chunk text is marked, longest first;
    marked characters / all characters."""
    hay = hay or Haystack(doc_text(chunks))
    t = hay.text
    if not t:
        return 0.0
    mark = bytearray(len(t))
    for k in sorted(set(usable_nav(nav_text, main_text)), key=len, reverse=True):
        i = t.find(k)
        while i >= 0:
            mark[i:i + len(k)] = b"\x01" * len(k)
            i = t.find(k, i + len(k))
    return sum(mark) / len(t)


def title_ok(expected: str, actual: str | None) -> bool:
    """The actual title holds the expected one (NFKC, case and whitespace ignored) and is not a
    runaway (at most MAX_TITLE_CHARS characters)."""
    if not actual or len(actual) > MAX_TITLE_CHARS:
        return False
    return key(expected) in key(actual)


# Letters that decoding windows-1252 bytes with another single-byte code page produces where
# cp1252 gives something else (cp1250 'ã' -> 'ă', 'º' -> 'ş', 'õ' -> 'ő' ...), and the lead
# letter of UTF-8-read-as-cp1252 mojibake ('Ã§'); plus U+FFFD. Letters only: bullets and
# other symbols are too common in real chrome to say anything.
_CONFUSION_CODECS = ("cp1250", "iso8859_2", "cp1251", "cp1253", "cp1254", "cp1257", "iso8859_15",
                     "mac_roman", "cp437", "cp850", "koi8_r", "iso8859_5", "mac_latin2")


def _confusion_set() -> frozenset[str]:
    chars = {"\ufffd"}
    for b in range(0x80, 0x100):
        ref = bytes([b]).decode("cp1252", errors="replace")
        for codec in _CONFUSION_CODECS:
            c = bytes([b]).decode(codec, errors="replace")
            if c != ref and unicodedata.category(c)[0] == "L":
                chars.add(c)
    # UTF-8 read as cp1252: 'Ã§' for 'ç', 'Ã£' for 'ã'
    chars.add("Ã")
    return frozenset(chars)


CONFUSION = _confusion_set()


def mis_decoded(chunks: list[dict], expectations: dict, title: str = "") -> int:
    """Characters of the chunk text (and title) that are U+FFFD or in the code-page confusion
    set while the expectations (title, main_text, nav_text) never contain them."""
    expected_chars = set("".join([expectations.get("title", "")] + expectations.get("main_text", [])
                                 + expectations.get("nav_text", [])))
    bad = CONFUSION - expected_chars | {"\ufffd"}
    text = title + "".join(c.get("text", "") for c in chunks)
    return sum(1 for ch in text if ch in bad)


# Article labels. Chunk text is plain text: blocks (paragraphs, headings) are joined by "\n" and
# the lines of a block by a space -- or by nothing between CJK characters, so consecutive CJK
# paragraphs that MuPDF set in one block run together ("…ものとする。（目的）第八条 国は…").
# An article's own label starts a line or a sentence, while a reference to it ("referred to in
# Article 12", "依照本办法第六条、第七条的规定", "第七条の規定") sits inside one. An occurrence of
# a label therefore counts as the START of that article when
#   1. it is at the start of the text or of a line (spaces allowed before it), or
#   2. it follows the end of a sentence: ". " / "; " / ": " (with whitespace) and is followed by
#      a line end or a capital letter or digit ("…Annex IV. Article 12 Record-keeping"; not
#      "…apply. Article 5 shall…"), or -- CJK labels only -- it directly follows 。；：！？ or a
#      closing bracket 」』）) (the caption "（目的）" of Japanese articles); and
#   3. it is not followed by a letter or digit (so "Article 1" is not "Article 12", "Art. 1º"
#      not "Art. 10"), nor by "(" / "-" / "º" / "ª" ("Article 6(2)" is a reference), nor, for
#      CJK labels, by の / 之 / a digit or bracket ("第三条の二" is another article).
# Whitespace inside a label may be any whitespace or none ("第 1 條", "1Overview" where the
# markup glues a section number to its title, NBSP in "Art. 5º"). Matching is on NFKC text.
_AFTER_LATIN = re.compile(r"[\w(\-–ºª°]")
_AFTER_CJK = re.compile(r"[のノ之0-9０-９(（]")
_SENT_END = ".;:!?"
_SENT_END_CJK = "。；：！？」』）)"


def _label_regex(label: str) -> re.Pattern:
    parts = [re.escape(c) for c in _WS.sub("", unicodedata.normalize("NFKC", label))]
    return re.compile(r"\s*".join(parts))


def _starts_article(t: str, start: int, end: int, cjk: bool) -> bool:
    nxt = t[end:end + 1]
    if nxt and (_AFTER_CJK if cjk else _AFTER_LATIN).match(nxt):
        return False
    j = start
    while j > 0 and t[j - 1] in " \t\u3000\xa0":
        j -= 1
    if j == 0 or t[j - 1] == "\n":
        return True
    prev, spaced = t[j - 1], j < start
    if cjk and prev in _SENT_END_CJK:
        return True
    if prev in _SENT_END and spaced:
        rest = t[end:end + 3].lstrip(" \t\xa0")
        return not rest or rest[0] == "\n" or rest[0].isupper() or rest[0].isdigit() or bool(_CJK.match(rest[0]))
    return False


def article_starts(text: str, labels: list[str]) -> list[str]:
    """Labels (from ``labels``) whose article starts in ``text``, in label order."""
    t = unicodedata.normalize("NFKC", text)
    out = []
    for label in labels:
        cjk = bool(_CJK.match(label.strip()[-1:])) if label.strip() else False
        if any(_starts_article(t, m.start(), m.end(), cjk) for m in _label_regex(label).finditer(t)):
            out.append(label)
    return out


def spanning_chunks(chunks: list[dict], labels: list[str]) -> list[tuple[int, list[str]]]:
    """(index, labels) of the chunks in which two or more different articles start."""
    out = []
    for i, c in enumerate(chunks):
        starts = article_starts(c.get("text", ""), labels)
        if len(set(starts)) >= 2:
            out.append((i, starts))
    return out


def _heading_match(expected: str, component: str) -> bool:
    """Is heading ``expected`` what heading-path component ``component`` says (or part of it)?

    Equal keys (whitespace ignored: "第一章　总　　则" is "第一章 总则"); or the expected text
    inside the component at word boundaries ("Article 12" in "Article 12 Record-keeping", not in
    "Article 120"); or the component's key starting with the expected key where a number ends
    and a word begins ("Part 1" in "Part 1Preliminary"); CJK text: key containment."""
    ek, ck = key(expected), key(component)
    if not ek:
        return False
    if ek == ck:
        return True
    if _CJK.search(ek):
        return ek in ck
    e, c = ws(expected).casefold(), ws(component).casefold()
    for m in re.finditer(re.escape(e), c):
        before = c[m.start() - 1] if m.start() else ""
        after = c[m.end()] if m.end() < len(c) else ""
        if not (before.isalnum()) and not (after.isalnum()):
            return True
    if ck.startswith(ek) and len(ck) > len(ek):
        nxt = ck[len(ek)]
        if ek[-1].isdigit() and not nxt.isdigit():
            return True
    return False


def heading_components(chunks: list[dict]) -> list[str]:
    seen: dict[str, None] = {}
    for c in chunks:
        for part in (c.get("heading") or "").split(" > "):
            if part.strip():
                seen.setdefault(part.strip(), None)
    return list(seen)


def headings_found(expected: list[str], chunks: list[dict]) -> tuple[list[str], list[str]]:
    """(found, missing) expected headings among the chunks' heading path components."""
    comps = heading_components(chunks)
    found, missing = [], []
    for h in expected:
        (found if any(_heading_match(h, c) for c in comps) else missing).append(h)
    return found, missing


_TABLE_POINT = re.compile(r"(?:^|[\s|])\(\s*(?:[a-z]{1,3}|[ivxlc]{1,6}|\d{1,3})\s*\)\s*\|")


def points_check(points: list[str], chunks: list[dict]) -> tuple[list[str], int]:
    """(points not found as running text, chunks where a point label is a table cell).

    A point is found when its text (NFKC, case-folded, whitespace collapsed -- a newline between
    "(a)" and its text is fine) occurs in the joined chunk text; a chunk where "(a)", "(iv)",
    "(12)" is followed by the " | " that extract puts between side-by-side table cells counts
    as table-joined."""
    joined = ws(" ".join(c.get("text", "") for c in chunks)).casefold()
    missing = [p for p in points if ws(p).casefold() not in joined]
    joined_cells = sum(1 for c in chunks if _TABLE_POINT.search(unicodedata.normalize("NFKC", c.get("text", ""))))
    return missing, joined_cells


def evaluate(expectations: dict, pdf_row: dict | None, chunks: list[dict],
             raw_row: dict | None = None) -> dict:
    """Every metric of one fixture from its render manifest row and its chunks."""
    hay = Haystack(doc_text(chunks))
    ret, missing = retention(expectations["main_text"], chunks, hay)
    found, miss_h = headings_found(expectations["headings"], chunks)
    sub_found, _ = headings_found(expectations["subheadings"], chunks)
    miss_p, table_points = points_check(expectations["points"], chunks)
    spans = spanning_chunks(chunks, expectations["articles"])
    title = (pdf_row or {}).get("title") or ""
    return {
        "name": expectations["name"],
        "class": expectations.get("class", ""),
        "lang": expectations.get("lang", ""),
        "status": (pdf_row or {}).get("status", "missing"),
        "error": (pdf_row or {}).get("error"),
        "root": (pdf_row or {}).get("root"),
        "pdf_pages": (pdf_row or {}).get("pages", 0) or 0,
        "encoding": (raw_row or {}).get("encoding"),
        "encoding_expected": expectations.get("encoding"),
        "retention": round(ret, 4),
        "nav_share": round(nav_share(expectations["nav_text"], expectations["main_text"], chunks, hay), 4),
        "title": title,
        "title_expected": expectations.get("title", ""),
        "title_ok": title_ok(expectations.get("title", ""), title),
        "mis_decoded": mis_decoded(chunks, expectations, title),
        "chunks": len(chunks),
        "chunks_with_heading": sum(1 for c in chunks if (c.get("heading") or "").strip()),
        "spanning_chunks": len(spans),
        "spanning_examples": [s[1] for s in spans[:5]],
        "articles": len(expectations["articles"]),
        "headings_expected": len(expectations["headings"]),
        "headings_found": len(found),
        "headings_missing": miss_h,
        "subheadings_found": f"{len(sub_found)}/{len(expectations['subheadings'])}",
        "points_missing": miss_p,
        "table_joined_points": table_points,
        "missing_passages": len(missing),
        "missing_examples": [m[:90] for m in missing[:5]],
    }


# --------------------------------------------------------------------------- driver
def _stage_params(repo: Path, sources: list[str]) -> dict:
    """The repository's own scrape/render/extract params, local sources, no delay, no threshold."""
    import yaml

    params: dict = {}
    p = repo / "params.yaml"
    if p.is_file():
        params = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    out = {k: dict(params.get(k) or {}) for k in ("scrape", "render", "extract")}
    out["scrape"].update(sources=sources, crawl=False, delay_s=0.0, min_ok_fraction=0.0)
    return out


def run_stage(name: str, workdir: Path, repo: Path, python: str | None = None,
              timeout: float = 1800) -> dict:
    """``python -m stages.<name>`` with cwd = workdir (its params.yaml, its data/) and the
    repository under test first on PYTHONPATH. Returns {rc, seconds, stage_seconds, stderr}."""
    env = {**os.environ, "PYTHONPATH": str(repo) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "HF_HUB_OFFLINE": "1", "DVC_NO_ANALYTICS": "1", "PYTHONHASHSEED": "0",
           "POLICYTUNE_LOG_LEVEL": os.environ.get("POLICYTUNE_LOG_LEVEL", "INFO")}
    t0 = time.monotonic()
    p = subprocess.run([python or sys.executable, "-m", f"stages.{name}"], cwd=workdir, env=env,
                       capture_output=True, text=True, timeout=timeout)
    dt = time.monotonic() - t0
    m = re.findall(r"in (\d+(?:\.\d+)?)s\s*$", p.stderr + p.stdout, re.M)
    return {"rc": p.returncode, "seconds": round(dt, 3),
            "stage_seconds": float(m[-1]) if m else None, "stderr": p.stderr[-4000:]}


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def prepare_workdir(sources: Iterable[Path], workdir: Path, repo: Path) -> Path:
    """workdir/site/ holding copies of the sources (files, or a folder's contents) and a
    params.yaml whose scrape reads site/."""
    import yaml

    workdir = Path(workdir)
    site = workdir / "site"
    if site.exists():
        shutil.rmtree(site)
    site.mkdir(parents=True)
    for src in map(Path, sources):
        if src.is_dir():
            shutil.copytree(src, site, dirs_exist_ok=True)
        else:
            shutil.copy2(src, site / src.name)
    params = _stage_params(Path(repo), ["site"])
    (workdir / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True, sort_keys=False),
                                         encoding="utf-8")
    return site


def run_pipeline(fixture_paths: Iterable[str | Path], workdir: str | Path, repo: str | Path | None = None,
                 python: str | None = None, timings: dict | None = None) -> tuple[list[dict], list[dict]]:
    """Scrape -> render -> extract the fixture pages exactly as the stages do; returns
    (render manifest rows, chunk rows). ``repo``: the checkout under test (default: $REAL_PAGES_REPO, else this one);
    ``timings`` (if given) receives each stage's {rc, seconds, stage_seconds, stderr} and the
    scrape manifest rows under "raw_rows". A stage that fails does not raise: its rc is in
    ``timings`` and the later stages see what it left."""
    repo = Path(repo or os.environ.get("REAL_PAGES_REPO") or Path(__file__).resolve().parents[2])
    workdir = Path(workdir)
    prepare_workdir([Path(p) for p in fixture_paths], workdir, repo)
    info = timings if timings is not None else {}
    for stage in ("scrape", "render", "extract"):
        info[stage] = run_stage(stage, workdir, repo, python)
    info["raw_rows"] = read_jsonl(workdir / "data" / "raw" / "manifest.jsonl")
    return read_jsonl(workdir / "data" / "pdf" / "manifest.jsonl"), read_jsonl(workdir / "data" / "chunks.jsonl")


def _basename(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def by_fixture(rows: list[dict], name: str, suffix: str = ".html") -> list[dict]:
    """Rows (manifest or chunks) whose url names fixture file ``name``."""
    return [r for r in rows if _basename(r.get("url") or "") == name + suffix]


def evaluate_all(names: list[str], pdf_rows: list[dict], chunks: list[dict], raw_rows: list[dict] | None = None,
                 folder: Path = FIXTURES) -> dict[str, dict]:
    out = {}
    for name in names:
        exp = load_expectations(folder / f"{name}.json")
        rows = by_fixture(pdf_rows, name)
        raws = by_fixture(raw_rows or [], name)
        out[name] = evaluate(exp, rows[0] if rows else None, by_fixture(chunks, name), raws[0] if raws else None)
    return out


def fmt(m: dict) -> str:
    """One line of a fixture's numbers, for test output and failure messages."""
    return (f"{m['name']} [{m['class']}]: status={m['status']}{'/' + m['error'] if m['error'] else ''} "
            f"root={m['root']} retention={m['retention']:.3f} nav_share={m['nav_share']:.3f} "
            f"title={m['title']!r} title_ok={m['title_ok']} mis_decoded={m['mis_decoded']} "
            f"encoding={m['encoding']} chunks={m['chunks']} with_heading={m['chunks_with_heading']} "
            f"spanning={m['spanning_chunks']} headings={m['headings_found']}/{m['headings_expected']} "
            f"table_joined_points={m['table_joined_points']} points_missing={len(m['points_missing'])} "
            f"pdf_pages={m['pdf_pages']}")
