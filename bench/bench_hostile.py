"""Hostile pages through scrape's sniffing/decoding, render and extract: seconds and the counted reason.

    python bench/bench_hostile.py [--timeout 120] [--out FILE.json]

Each case runs in its own subprocess with the repository in the current directory on sys.path
(so ``cd /tmp/old-checkout && python /work/main/bench/bench_hostile.py`` measures old code), under
a wall-clock timeout: a case that does not finish is reported as killed after the timeout.
Per case: ``finish_html`` on the body as served without a Content-Type (sniffing + charset
decoding + the UTF-8 re-declaration), then ``render_pages`` and ``extract_all`` on the saved page.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

MB = 1_000_000


def _fill(unit: str, size: int = 5 * MB) -> str:
    return unit * (size // len(unit))


CASES = {
    "comments_5MB": lambda: _fill("<!---->") + "<html><body><p>policy text for the page</p></body></html>",
    "meta_open_5MB": lambda: "<html><body><p>policy text for the page</p>" + _fill("<meta "),
    "script_open_5MB": lambda: "<html><body><p>policy text for the page</p>" + _fill("<script "),
    "script_close_5MB": lambda: "<html><body><script>" + _fill("</script "),
    "title_open_5MB": lambda: "<html>" + _fill("<title "),
    "word_4.9MB": lambda: "<html><body><p>" + "x" * 4_900_000 + "</p></body></html>",
    "tag_bomb_5MB": lambda: "<html><body>" + _fill("<p>x"),
    "deep_nesting": lambda: "<html><body>" + "<div>" * 100_000 + "deep policy text" + "</div>" * 100_000,
}

CHILD = r"""
import json, sys, time, tempfile
from pathlib import Path
sys.path.insert(0, ".")
from bench.bench_hostile import CASES
name = sys.argv[1]
body = CASES[name]().encode("utf-8")
from policytune.corpus.fetch import finish_html, new_record
out = {}
t = time.monotonic()
rec, text = finish_html(new_record("http://127.0.0.1/x"), body, {})
out["scrape_s"] = round(time.monotonic() - t, 2)
out["scrape_status"] = rec["status"]
from policytune.corpus.html import RenderConfig
from policytune.corpus.render import render_pages
from policytune.corpus.chunking import ExtractConfig, extract_all
from policytune.core.progress import get_logger
work = Path(tempfile.mkdtemp())
page = work / "page.html"
page.write_text(text if text is not None else body.decode("utf-8", "replace"), encoding="utf-8")
rows = [{"url": "http://127.0.0.1/x", "final_url": "http://127.0.0.1/x", "status": "ok", "path": "page.html"}]
t = time.monotonic()
man, stats = render_pages(rows, work, "pdf", RenderConfig(), [])
out["render_s"] = round(time.monotonic() - t, 2)
out["render_status"] = man[0]["status"] + ("" if man[0]["status"] == "ok" else ":" + str(man[0].get("error")))
t = time.monotonic()
chunks, _ = extract_all(man, work, ExtractConfig(), get_logger("bench"))
out["extract_s"] = round(time.monotonic() - t, 2)
out["chunks"] = len(chunks)
print("RESULT " + json.dumps(out))
"""


def run_case(name: str, timeout: float) -> dict:
    t0 = time.monotonic()
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "HF_HUB_OFFLINE": "1"}
    bench_dir = Path(__file__).resolve().parent
    # the child imports this module as bench.bench_hostile from the repository under test; make
    # sure it exists there (older checkouts do not have it)
    code = CHILD.replace('from bench.bench_hostile import CASES',
                         f'sys.path.insert(0, {str(bench_dir)!r}); from bench_hostile import CASES')
    try:
        p = subprocess.run([sys.executable, "-c", code, name], capture_output=True, text=True,
                           timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"case": name, "killed_after_s": timeout}
    wall = round(time.monotonic() - t0, 2)
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            return {"case": name, "wall_s": wall, **json.loads(line[7:])}
    return {"case": name, "wall_s": wall, "error": (p.stderr or p.stdout)[-400:]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--out", default="")
    ap.add_argument("--only", nargs="*", default=None)
    args = ap.parse_args(argv)
    rows = []
    print("| case | scrape s | scrape status | render s | render status | extract s | chunks | wall s (process) |")
    print("|---|---:|---|---:|---|---:|---:|---:|")
    for name in args.only or CASES:
        r = run_case(name, args.timeout)
        rows.append(r)
        if "killed_after_s" in r:
            print(f"| {name} | | | | killed after {r['killed_after_s']:.0f} s | | | |")
        elif "error" in r:
            print(f"| {name} | error: {r['error'][-120:]!r} |")
        else:
            print(f"| {name} | {r['scrape_s']} | {r['scrape_status']} | {r['render_s']} | {r['render_status']} | "
                  f"{r['extract_s']} | {r['chunks']} | {r['wall_s']} |")
        sys.stdout.flush()
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
