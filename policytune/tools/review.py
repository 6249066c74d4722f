"""Pull-request review comment: what this branch changed against a base revision.

    python -m policytune.tools.review --base main --out review/      # or: make review BASE=main

Writes ``review/comment.md`` (post it as the PR comment) and ``review/plots.html`` with one
PNG per DVC plot (base vs branch drawn by matplotlib from ``dvc plots diff --json``, so the
page is static and renders offline). Sections: ``dvc metrics diff --md`` for every declared
metrics file (data, train, eval, judge), the branch's base-vs-fine-tuned table with bootstrap
CIs from metrics/eval.json, and ``dvc params diff --md``.
"""

from __future__ import annotations

import argparse
import html
import json
import subprocess
import sys
from pathlib import Path

from policytune.core.records import flatten, read_json
from policytune.evaluation import metrics as M


def dvc(*args: str, cwd: Path) -> str:
    p = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"dvc {' '.join(args)} failed: {p.stderr.strip()[-2000:]}")
    return p.stdout


def _fmt(x) -> str:
    return f"{x:.4f}" if isinstance(x, (int, float)) else "–"


def eval_table(eval_json: Path) -> str:
    """Markdown table: base vs fine-tuned means and the paired delta with its 95% CI."""
    if not eval_json.exists():
        return "_metrics/eval.json not found: the evaluate stage has not run on this branch._\n"
    flat = flatten(read_json(eval_json))
    metrics = sorted({k.split(".")[1] for k in flat if k.startswith("delta.") and k.endswith(".mean")})
    rows = ["| metric | base | fine-tuned | delta | 95% CI | verdict |", "|---|---|---|---|---|---|"]
    for name in metrics:
        lo, hi = flat.get(f"delta.{name}.ci_low"), flat.get(f"delta.{name}.ci_high")
        # the evaluate/report stages' own verdict: the metric's good direction (lower perplexity
        # is better; answer length has none)
        verdict = (M.verdict(float(lo), float(hi), M.DIRECTION.get(name, 1))
                   if isinstance(lo, (int, float)) and isinstance(hi, (int, float)) else "no data")
        rows.append(f"| {name} | {_fmt(flat.get(f'base.{name}.mean'))} | {_fmt(flat.get(f'finetuned.{name}.mean'))} "
                    f"| {_fmt(flat.get(f'delta.{name}.mean'))} | [{_fmt(lo)}, {_fmt(hi)}] | {verdict} |")
    n = flat.get("n")
    return "\n".join(rows) + (f"\n\nn = {n} test questions\n" if n is not None else "\n")


def headline_metric(name: str) -> bool:
    """Rows a reviewer reads first: the fine-tuning deltas, the best eval loss, failure counts."""
    return (name.startswith("delta.") and name.endswith(".mean")) or name == "best_eval_loss" or "fail" in name


def split_metrics_diff(md: str) -> str:
    """``dvc metrics diff --md`` as the headline rows, then every row in a collapsed
    ``<details>`` block (the full diff of a default run is 100+ rows)."""
    lines = [line for line in md.strip().splitlines() if line.strip()]
    if len(lines) < 3:
        return md.strip() or "_no metric changed_"
    header, rule, rows = lines[0], lines[1], lines[2:]
    cols = [c.strip() for c in header.strip("|").split("|")]
    at = cols.index("Metric") if "Metric" in cols else 1
    top = [r for r in rows if len(r.strip("|").split("|")) > at and headline_metric(r.strip("|").split("|")[at].strip())]
    head = "\n".join([header, rule, *top]) if top else "_no headline metric changed_"
    return (f"{head}\n\n<details><summary>All {len(rows)} changed metrics</summary>\n\n"
            + "\n".join([header, rule, *rows]) + "\n\n</details>\n")


def render_plots(base: str, cwd: Path, out: Path) -> list[Path]:
    """One PNG per DVC plot, every revision as its own line/series."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads(dvc("plots", "diff", "--json", base, cwd=cwd) or "{}").get("data", {})
    pngs = []
    for i, (name, specs) in enumerate(sorted(data.items())):
        for spec in specs:
            content = spec.get("content") or {}
            values = (content.get("data") or {}).get("values") or []
            enc = content.get("encoding") or {}
            x = (enc.get("x") or {}).get("field")
            y = None
            for layer in content.get("layer", []):
                y = y or ((layer.get("encoding") or {}).get("y") or {}).get("field")
            y = y or (enc.get("y") or {}).get("field")
            if not values or not x or not y:
                continue
            fig, ax = plt.subplots(figsize=(6, 3.5))
            for rev in spec.get("revisions", []):
                pts = [(float(v[x]), float(v[y])) for v in values
                       if v.get("rev") == rev and _num(v.get(x)) and _num(v.get(y))]
                if pts:
                    ax.plot(*zip(*sorted(pts)), marker=".", label=rev)
            ax.set_title(name)
            ax.set_xlabel(x)
            ax.set_ylabel(y)
            ax.legend()
            fig.tight_layout()
            png = out / f"plot_{i}.png"
            fig.savefig(png, dpi=100)
            plt.close(fig)
            pngs.append(png)
    return pngs


def _num(v) -> bool:
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


def build(base: str, cwd: Path, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    parts = [f"## policytune: this branch vs `{base}`\n"]
    parts.append("### Metrics (`dvc metrics diff`)\n")
    parts.append(split_metrics_diff(dvc("metrics", "diff", "--md", base, cwd=cwd)))
    parts.append("\n### Base vs fine-tuned on this branch\n")
    parts.append(eval_table(cwd / "metrics" / "eval.json"))
    parts.append("### Params (`dvc params diff`)\n")
    parts.append(dvc("params", "diff", "--md", base, cwd=cwd).strip() or "_no param changed_")
    pngs = render_plots(base, cwd, out)
    parts.append(f"\n### Plots\n{len(pngs)} plot(s) of `dvc plots diff {base}` rendered to `{out}/plots.html`.\n")
    comment = out / "comment.md"
    comment.write_text("\n".join(parts) + "\n", encoding="utf-8")
    imgs = "".join(f'<figure><img src="{p.name}" alt="{html.escape(p.stem)}"></figure>' for p in pngs)
    (out / "plots.html").write_text(
        f"<!doctype html><meta charset=utf-8><title>dvc plots diff {html.escape(base)}</title>"
        f"<h1>dvc plots diff {html.escape(base)}</h1>{imgs or '<p>no plots</p>'}", encoding="utf-8")
    return comment


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="main", help="git revision to compare against")
    ap.add_argument("--out", default="review", help="output folder")
    a = ap.parse_args(argv)
    comment = build(a.base, Path.cwd(), Path(a.out))
    print(comment.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
