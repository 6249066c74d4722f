"""Pull-request review comment: what this branch changed against a base revision.

    python -m policytune.tools.review --base main --out review/      # or: make review BASE=main
    python -m policytune.tools.review --out review/ --post-pr 42     # CI: post or update it

Writes ``review/comment.md`` (post it as the PR comment) and ``review/plots.html`` with one
PNG per DVC plot (base vs branch drawn by matplotlib from ``dvc plots diff --json``, so the
page is static and renders offline). Sections: ``dvc metrics diff --md`` for every declared
metrics file (data, train, eval, judge), the branch's base-vs-fine-tuned table with bootstrap
CIs from metrics/eval.json, and ``dvc params diff --md``. ``--plots-url`` links the plot
images from the comment (the workflow passes its run page, where they are an artifact).

The comment starts with the hidden marker :data:`MARKER`; ``--post-pr`` finds the earlier
comment carrying it on the pull request and edits it in place (one sticky comment per pull
request), or creates it. It needs ``GITHUB_TOKEN`` and ``GITHUB_REPOSITORY`` (``owner/name``);
``GITHUB_API_URL`` defaults to https://api.github.com.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

from policytune.core.records import flatten, read_json
from policytune.evaluation import metrics as M

# Hidden first line of every comment: how --post-pr recognises its own earlier comment.
MARKER = "<!-- policytune-review -->"
# GitHub rejects issue comments over 65536 characters.
MAX_COMMENT_CHARS = 65536


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


def variants_table(eval_json: Path) -> str:
    """Markdown: fact recall / all facts / contradiction of every variant with CIs, the best
    variant, and whether fine-tuning helped with and without retrieval (fact recall)."""
    if not eval_json.exists():
        return ""
    from policytune.evaluation.config import VARIANTS, best_variant

    flat = flatten(read_json(eval_json))
    variants = [v for v in VARIANTS if f"{v}.fact_recall.mean" in flat]
    if not variants:
        return ""
    cols = ("fact_recall", "all_facts", "contradiction")
    rows = ["| variant | " + " | ".join(cols) + " | looping answers |", "|---" * (len(cols) + 2) + "|"]
    for v in variants:
        cells = [f"{_fmt(flat.get(f'{v}.{c}.mean'))} [{_fmt(flat.get(f'{v}.{c}.ci_low'))}, "
                 f"{_fmt(flat.get(f'{v}.{c}.ci_high'))}]" for c in cols]
        rows.append(f"| {v} | " + " | ".join(cells) + f" | {flat.get(f'{v}.looping_answers', '–')} |")
    lines = ["\n".join(rows), "", f"Best variant by fact recall: **{best_variant(flat)}**."]
    for comp, what in (("delta", "without retrieval"), ("delta_rag", "with retrieval")):
        lo, hi = flat.get(f"{comp}.fact_recall.ci_low"), flat.get(f"{comp}.fact_recall.ci_high")
        if isinstance(lo, (int, float)) and isinstance(hi, (int, float)):
            lines.append(f"Fine-tuning {what}: fact recall {_fmt(flat.get(f'{comp}.fact_recall.mean'))} "
                         f"[{_fmt(lo)}, {_fmt(hi)}], {M.verdict(float(lo), float(hi), 1)}.")
    g = flat.get("general.delta.accuracy.mean")
    if isinstance(g, (int, float)):
        lines.append(f"General skills (forgetting check), fine-tuned − base: {_fmt(g)} "
                     f"[{_fmt(flat.get('general.delta.accuracy.ci_low'))}, {_fmt(flat.get('general.delta.accuracy.ci_high'))}].")
    return "\n".join(lines) + "\n"


def headline_metric(name: str) -> bool:
    """Rows a reviewer reads first: the fine-tuning deltas (with and without retrieval), the
    best eval loss, failure and looping counts, the judge probe's AUC."""
    return ((name.startswith(("delta.", "delta_rag.", "general.delta.")) and name.endswith(".mean"))
            or name in ("best_eval_loss", "probe.auc") or "fail" in name or name.endswith("looping_answers"))


def split_metrics_diff(md: str, full: bool = True) -> str:
    """``dvc metrics diff --md`` as the headline rows, then (``full``) every row in a collapsed
    ``<details>`` block (the full diff of a default run is 100+ rows)."""
    lines = [line for line in md.strip().splitlines() if line.strip()]
    if len(lines) < 3:
        return md.strip() or "_no metric changed_"
    header, rule, rows = lines[0], lines[1], lines[2:]
    cols = [c.strip() for c in header.strip("|").split("|")]
    at = cols.index("Metric") if "Metric" in cols else 1
    top = [r for r in rows if len(r.strip("|").split("|")) > at and headline_metric(r.strip("|").split("|")[at].strip())]
    head = "\n".join([header, rule, *top]) if top else "_no headline metric changed_"
    if not full:
        return f"{head}\n\n_{len(rows)} metrics changed; the full table is in `dvc metrics diff`._\n"
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


def build(base: str, cwd: Path, out: Path, plots_url: str | None = None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    parts = [MARKER, f"## policytune: this branch vs `{base}`\n"]
    parts.append("### Metrics (`dvc metrics diff`)\n")
    metrics_md = dvc("metrics", "diff", "--md", base, cwd=cwd)
    parts.append(split_metrics_diff(metrics_md))
    variants = variants_table(cwd / "metrics" / "eval.json")
    if variants:
        parts.append("\n### Answer variants on this branch (fact-level correctness)\n")
        parts.append(variants)
    parts.append("\n### Base vs fine-tuned on this branch\n")
    parts.append(eval_table(cwd / "metrics" / "eval.json"))
    parts.append("### Params (`dvc params diff`)\n")
    parts.append(dvc("params", "diff", "--md", base, cwd=cwd).strip() or "_no param changed_")
    pngs = render_plots(base, cwd, out)
    where = f"[the images and `plots.html`]({plots_url})" if plots_url else f"`{out}/plots.html`"
    parts.append(f"\n### Plots\n{len(pngs)} plot(s) of `dvc plots diff {base}`: {where}.\n")
    text = "\n".join(parts) + "\n"
    if len(text) > MAX_COMMENT_CHARS:  # drop the collapsed full table first, then cut
        short = split_metrics_diff(metrics_md, full=False)
        text = text.replace(split_metrics_diff(metrics_md), short)
        if len(text) > MAX_COMMENT_CHARS:
            text = text[:MAX_COMMENT_CHARS - 40] + "\n\n_(comment cut at GitHub's limit)_\n"
    comment = out / "comment.md"
    comment.write_text(text, encoding="utf-8")
    imgs = "".join(f'<figure><img src="{p.name}" alt="{html.escape(p.stem)}"></figure>' for p in pngs)
    (out / "plots.html").write_text(
        f"<!doctype html><meta charset=utf-8><title>dvc plots diff {html.escape(base)}</title>"
        f"<h1>dvc plots diff {html.escape(base)}</h1>{imgs or '<p>no plots</p>'}", encoding="utf-8")
    return comment


def _github(method: str, url: str, token: str, body: dict | None = None, timeout: float = 30):
    req = urllib.request.Request(url, method=method, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Authorization": f"Bearer {token}", "Accept": "application/vnd.github+json",
                                          "X-GitHub-Api-Version": "2022-11-28", "Content-Type": "application/json",
                                          "User-Agent": "policytune-review"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read() or b"null")


def post_sticky(body: str, repo: str, pr: int, token: str, api_url: str = "https://api.github.com") -> tuple[str, int]:
    """Create the pull request's review comment, or edit the one that carries :data:`MARKER`.

    Returns ``("created" | "updated", comment id)``. Pages through every comment (100 a page),
    so an old sticky comment is found however long the discussion got."""
    if MARKER not in body:
        body = f"{MARKER}\n{body}"
    base = f"{api_url.rstrip('/')}/repos/{repo}"
    page, found = 1, None
    while found is None:
        batch = _github("GET", f"{base}/issues/{pr}/comments?per_page=100&page={page}", token) or []
        found = next((c["id"] for c in batch if MARKER in (c.get("body") or "")), None)
        if len(batch) < 100:
            break
        page += 1
    if found is not None:
        _github("PATCH", f"{base}/issues/comments/{found}", token, {"body": body})
        return "updated", found
    return "created", _github("POST", f"{base}/issues/{pr}/comments", token, {"body": body})["id"]


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m policytune.tools.review", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="main", help="git revision to compare against")
    ap.add_argument("--out", default="review", help="output folder")
    ap.add_argument("--plots-url", default=None, help="where the comment links the plot images (CI: the run page)")
    ap.add_argument("--post-pr", type=int, default=None, metavar="N",
                    help="post <out>/comment.md as pull request N's sticky comment (edit it in place if it exists) "
                         "instead of building; needs GITHUB_TOKEN and GITHUB_REPOSITORY")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    a = ap.parse_args(argv)
    if a.post_pr is not None:
        token, repo = os.environ.get("GITHUB_TOKEN", ""), os.environ.get("GITHUB_REPOSITORY", "")
        if not token or not repo:
            ap.error("--post-pr needs GITHUB_TOKEN and GITHUB_REPOSITORY in the environment")
        action, cid = post_sticky((Path(a.out) / "comment.md").read_text(encoding="utf-8"), repo, a.post_pr, token,
                                  os.environ.get("GITHUB_API_URL", "https://api.github.com"))
        print(f"review comment {cid} {action} on {repo}#{a.post_pr}")
        return 0
    comment = build(a.base, Path.cwd(), Path(a.out), a.plots_url)
    print(comment.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
