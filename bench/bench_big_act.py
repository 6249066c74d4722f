"""A regulation-sized page through render and extract: PDF pages, seconds, retention, heading paths.

    python bench/bench_big_act.py [--repeat 60] [--out FILE.json]

Builds the page from the EUR-Lex fixture (tests/fixtures/real_pages/eurlex_annexes.html): its
chapters repeated ``--repeat`` times with the article numbers shifted (60 -> 2.8 MB, ~92,000 tags,
~520 PDF pages, the size of a long act), annexes kept at the end. Runs with the repository in
the current directory on sys.path, so an older checkout can be measured with the same page.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

FIXTURE = Path(__file__).resolve().parents[1] / "tests/fixtures/real_pages/eurlex_annexes.html"


def build(repeat: int) -> str:
    s = FIXTURE.read_text(encoding="utf-8")
    a = re.search(r'<p[^>]*class="oj-ti-section-1"', s).start()
    b = s.rfind("<div", 0, s.index(">ANNEX I<"))
    body = s[a:b]
    parts = [re.sub(r"Article (\d+)", lambda m, k=k: f"Article {int(m.group(1)) + 12 * k}", body)
             for k in range(repeat)]
    return s[:a] + "".join(parts) + s[b:]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=60)
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(Path.cwd()))
    from policytune.core.progress import get_logger
    from policytune.corpus.chunking import ExtractConfig, extract_all
    from policytune.corpus.html import RenderConfig
    from policytune.corpus.render import render_pages

    html = build(args.repeat)
    work = Path(tempfile.mkdtemp())
    try:
        (work / "act.html").write_text(html, encoding="utf-8")
        url = "https://eur-lex.europa.eu/eli/reg/2024/1689/oj"
        rows = [{"url": url, "final_url": url, "status": "ok", "path": "act.html"}]
        t = time.monotonic()
        man, _ = render_pages(rows, work, "pdf", RenderConfig(), [])
        render_s = time.monotonic() - t
        t = time.monotonic()
        chunks, _ = extract_all(man, work, ExtractConfig(), get_logger("bench"))
        extract_s = time.monotonic() - t
    finally:
        shutil.rmtree(work, ignore_errors=True)
    r = man[0]
    out = {"bytes": len(html.encode()), "start_tags": html.count("<") - html.count("</"),
           "status": r["status"], "error": r.get("error"), "pdf_pages": r["pages"], "retention": r.get("retention"),
           "render_s": round(render_s, 2), "extract_s": round(extract_s, 2), "chunks": len(chunks),
           "chunks_with_heading": sum(1 for c in chunks if c.get("heading"))}
    print(json.dumps(out))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
