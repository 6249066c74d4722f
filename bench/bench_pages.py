"""Real-page benchmark of the data stages (issue 14): scrape -> render -> extract on the fixtures of
tests/fixtures/real_pages/ and on the sample site, with the issue's quality numbers per fixture and
the render+extract throughput per corpus.

    python bench/bench_pages.py [--fixtures DIR] [--sample data/sample_site] [--out FILE.json]
                                [--repeat N] [--keep DIR]

The repository under test is the one the CURRENT DIRECTORY is in (its ``stages`` / ``policytune``
run as subprocesses: ``python -m stages.<name>`` with cwd = a throw-away folder and PYTHONPATH =
that repository), so an older checkout is measured with this script unchanged::

    git worktree add --detach /tmp/before a42f568
    cd /tmp/before && PYTHONPATH=/tmp/before /work/main/.venv/bin/python /work/main/bench/bench_pages.py \\
        --fixtures /work/main/tests/fixtures/real_pages --out /tmp/before.json

Only the checker (tests/helpers/real_pages.py, standard library + PyYAML) is loaded from the
repository this script sits in, by file path: nothing of the code under test is imported here.

Per fixture: render status, retention (share of the expected main text found in the chunks),
nav share (share of chunk text that is page chrome), title and title_ok, mis-decoded characters,
chunks, chunks with a heading, chunks holding the start of two articles, expected headings found,
points read as table cells, PDF pages. Per corpus (fixtures, sample site): HTML pages, PDFs, PDF
pages, chunks, render and extract wall seconds (subprocess, interpreter start included) and the
stages' own logged seconds, HTML pages/s and PDF pages/s of render+extract. ``--repeat`` runs each
corpus N times in fresh folders (render is incremental: a second run in the same folder would
reuse its PDFs) and keeps the fastest. Prints a markdown table, writes JSON.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OWN_REPO = HERE.parent


def load_checker():
    path = OWN_REPO / "tests" / "helpers" / "real_pages.py"
    spec = importlib.util.spec_from_file_location("_real_pages_checker", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def repo_under_test(cwd: Path) -> Path:
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=cwd, capture_output=True,
                             text=True, check=True).stdout.strip()
        root = Path(top)
    except (subprocess.CalledProcessError, FileNotFoundError):
        root = cwd
    if not (root / "stages" / "render.py").is_file():
        sys.exit(f"{root} has no stages/render.py: run this from the repository to measure")
    return root


def git_info(repo: Path) -> dict:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True,
                                  check=True).stdout.strip()
        except (subprocess.CalledProcessError, FileNotFoundError):
            return ""
    status = git("status", "--porcelain", "--untracked-files=no", "--", "policytune", "stages")
    return {"commit": git("rev-parse", "HEAD"), "describe": git("log", "-1", "--format=%h %s")[:120],
            "dirty": bool(status), "dirty_files": status.splitlines()[:20]}


def run_corpus(rp, sources: list[Path], repo: Path, repeat: int, keep: Path | None, label: str) -> dict:
    """Run the three stages on ``sources`` ``repeat`` times (fresh folder each); the fastest run's
    timings, the outputs of the last run."""
    best = None
    for i in range(repeat):
        wd = Path(tempfile.mkdtemp(prefix=f"bench_pages_{label}_"))
        info: dict = {}
        rows, chunks = rp.run_pipeline(sources, wd, repo=repo, python=sys.executable, timings=info)
        t = info["render"]["seconds"] + info["extract"]["seconds"]
        if best is None or t < best["t"]:
            best = {"t": t, "info": info}
        last = (rows, chunks, info, wd)
        if keep is not None and i == repeat - 1:
            dest = keep / label
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(wd, dest)
        shutil.rmtree(wd, ignore_errors=True)
    rows, chunks, info, _ = last
    binfo = best["info"]
    raw_ok = sum(1 for r in info["raw_rows"] if r.get("status") == "ok")
    pdfs = [r for r in rows if r.get("status") == "ok"]
    pdf_pages = sum(r.get("pages") or 0 for r in pdfs)
    wall = binfo["render"]["seconds"] + binfo["extract"]["seconds"]
    own = [binfo[s]["stage_seconds"] for s in ("render", "extract")]
    return {
        "rows": rows, "chunks": chunks, "raw_rows": info["raw_rows"],
        "summary": {
            "html_pages": raw_ok, "pdfs": len(pdfs), "rejected": len(rows) - len(pdfs), "pdf_pages": pdf_pages,
            "chunks": len(chunks), "chunks_with_heading": sum(1 for c in chunks if (c.get("heading") or "").strip()),
            "scrape_s": binfo["scrape"]["seconds"], "render_s": binfo["render"]["seconds"],
            "extract_s": binfo["extract"]["seconds"],
            "render_stage_s": own[0], "extract_stage_s": own[1],
            "render_extract_s": round(wall, 3),
            "html_pages_per_s": round(raw_ok / wall, 3) if wall else None,
            "pdf_pages_per_s": round(pdf_pages / wall, 3) if wall else None,
            "stage_rc": {s: info[s]["rc"] for s in ("scrape", "render", "extract")},
            "stage_errors": {s: info[s]["stderr"][-1500:] for s in ("scrape", "render", "extract") if info[s]["rc"]},
            "repeat": repeat,
        },
    }


def markdown(fixtures: dict, corpora: dict) -> str:
    out = ["| fixture | class | status | retention | nav share | title | title ok | mis-decoded | chunks | "
           "with heading | spanning | headings | table points | PDF pages |",
           "|---|---|---|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, m in fixtures.items():
        title = (m["title"] or "").replace("|", "\\|")
        title = title if len(title) <= 48 else title[:45] + "..."
        out.append(f"| {name} | {m['class']} | {m['status']}{'/' + m['error'] if m['error'] else ''} | "
                   f"{m['retention']:.3f} | {m['nav_share']:.3f} | {title} | {'yes' if m['title_ok'] else 'NO'} | "
                   f"{m['mis_decoded']} | {m['chunks']} | {m['chunks_with_heading']} | {m['spanning_chunks']} | "
                   f"{m['headings_found']}/{m['headings_expected']} | {m['table_joined_points']} | {m['pdf_pages']} |")
    out += ["", "| corpus | HTML pages | PDFs | PDF pages | chunks | with heading | render s | extract s | "
                "(stage-logged s) | HTML pages/s | PDF pages/s |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    for label, c in corpora.items():
        s = c
        out.append(f"| {label} | {s['html_pages']} | {s['pdfs']} | {s['pdf_pages']} | {s['chunks']} | "
                   f"{s['chunks_with_heading']} | {s['render_s']:.2f} | {s['extract_s']:.2f} | "
                   f"{s['render_stage_s']} + {s['extract_stage_s']} | {s['html_pages_per_s']} | {s['pdf_pages_per_s']} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--fixtures", type=Path, default=None,
                    help="folder of <name>.html + <name>.json (default: this script's tests/fixtures/real_pages)")
    ap.add_argument("--sample", type=Path, default=None,
                    help="sample site folder (default: data/sample_site of the repository under test, "
                         "else of this script's repository); 'none' to skip")
    ap.add_argument("--out", type=Path, default=None, help="JSON file to write")
    ap.add_argument("--repeat", type=int, default=1, help="runs per corpus, fastest kept (default 1)")
    ap.add_argument("--keep", type=Path, default=None, help="copy each corpus's last work folder here")
    args = ap.parse_args(argv)

    rp = load_checker()
    repo = repo_under_test(Path.cwd())
    fixtures_dir = (args.fixtures or rp.FIXTURES).resolve()
    names = rp.fixture_names(fixtures_dir)
    if not names:
        sys.exit(f"no fixtures (<name>.html + <name>.json) in {fixtures_dir}")
    sample = args.sample
    if sample is None:
        sample = next((p for p in (repo / "data" / "sample_site", OWN_REPO / "data" / "sample_site") if p.is_dir()), None)
    elif str(sample).lower() == "none":
        sample = None
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)

    t0 = time.monotonic()
    fx = run_corpus(rp, [fixtures_dir / f"{n}.html" for n in names], repo, args.repeat, args.keep, "fixtures")
    per_fixture = rp.evaluate_all(names, fx["rows"], fx["chunks"], fx["raw_rows"], folder=fixtures_dir)
    corpora = {"fixtures": fx["summary"]}
    if sample is not None:
        sm = run_corpus(rp, [Path(sample).resolve()], repo, args.repeat, args.keep, "sample")
        corpora["sample"] = sm["summary"]
        corpora["sample"]["titles"] = {r["url"]: r.get("title") for r in sm["rows"]}
    report = {
        "repo": str(repo), **git_info(repo), "fixtures_dir": str(fixtures_dir),
        "sample": str(sample) if sample else None, "python": sys.executable,
        "platform": platform.platform(), "cpus": __import__("os").cpu_count(),
        "seconds": round(time.monotonic() - t0, 1),
        "fixtures": per_fixture, "corpora": corpora,
    }
    print(f"repository under test: {repo} @ {report['describe']}{' (dirty)' if report['dirty'] else ''}")
    print(markdown(per_fixture, {k: v for k, v in corpora.items()}))
    for label, c in corpora.items():
        for stage, err in c["stage_errors"].items():
            print(f"\n{label}: stages.{stage} exited {c['stage_rc'][stage]}:\n{err}", file=sys.stderr)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
