"""report: the study's tables for base vs fine-tuned, with confidence intervals and verdicts.

Reads   metrics/eval.json, data/eval/per_example.jsonl, data/eval/answers.jsonl  (evaluate)
        metrics/judge.json, data/judge/scores.jsonl   (judge; optional: "judge not run" without)
        data/stats/evaluate.json, data/stats/judge.json  (timings; optional)
        metrics/train.json, metrics/data.json  (training summary, pipeline counts; optional)
        lineage, each optional: data/raw/manifest.jsonl, data/chunks.jsonl, data/qa.jsonl,
        data/split/{train,val,test}.jsonl, data/augment/train.jsonl, params.yaml,
        models/*/policytune_model.json, models/adapter/policytune_train.json
Params  ``report`` (see :class:`ReportConfig`).
Writes  metrics/report.md             the report (GitHub-flavoured Markdown)
        metrics/report.html           the same content as one HTML page (all text escaped)
        metrics/report_assets/*.png   its plots (matplotlib)

Contents: a headline answer to "did fine-tuning help?"; Table 1 of the study (BERTScore,
cosine, relevance: mean, std, min, 25%, 50%, 75%, max for fine-tuned and base) and the same
statistics for every other metric; Tables 2/3 (LLM-judge metrics) when the judge ran; every
delta with its confidence interval (paired bootstrap over questions, from metrics/eval.json and
metrics/judge.json) and a verdict read off the interval (better / worse / no significant
difference); judge failure counts; example questions with the reference and both answers side
by side; plots; evaluation timings; and the data lineage (corpus hash, QA count, split sizes,
model manifests, params).
"""

from __future__ import annotations

import argparse
import html
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from policytune.evaluation import metrics as M
from policytune.core.params import ParamsError, load_section
from policytune.core.progress import get_logger
from policytune.core.records import atomic_write_text, read_json, read_jsonl, sha256_file

log = get_logger("report")

EVAL_JSON = Path("metrics/eval.json")
PER_EXAMPLE = Path("data/eval/per_example.jsonl")
ANSWERS = Path("data/eval/answers.jsonl")
JUDGE_JSON = Path("metrics/judge.json")
JUDGE_SCORES = Path("data/judge/scores.jsonl")
EVAL_STATS = Path("data/stats/evaluate.json")
TRAIN_JSON = Path("metrics/train.json")
DATA_JSON = Path("metrics/data.json")
JUDGE_STATS = Path("data/stats/judge.json")
OUT_MD = Path("metrics/report.md")
OUT_HTML = Path("metrics/report.html")
ASSETS = "report_assets"  # beside the report

# Display names, in report order.
EVAL_METRICS = {
    "bertscore_f1": "BERTScore F1", "bertscore_p": "BERTScore P", "bertscore_r": "BERTScore R",
    "cosine": "Cosine similarity", "relevance": "Relevance", "token_f1": "Token F1", "rouge_l": "ROUGE-L",
    "bleu": "BLEU", "ref_ppl": "Reference perplexity", "ref_nll": "Reference NLL", "answer_len": "Answer length (words)",
}
TABLE1 = ("bertscore_f1", "cosine", "relevance")  # the study's Table 1 columns
MODEL_NAMES = {"base": "Base", "finetuned": "Fine-tuned", "base_rag": "Base + RAG", "finetuned_rag": "Fine-tuned + RAG"}
COMPARISON_NAMES = {
    "delta": "Fine-tuned − base", "delta_rag": "Fine-tuned + RAG − base + RAG",
    "rag_effect_base": "Base + RAG − base", "rag_effect_finetuned": "Fine-tuned + RAG − fine-tuned",
}
STAT_ROWS = ("mean", "std", "min", "25%", "50%", "75%", "max")


@dataclass
class BootstrapConfig:
    n_resamples: int = field(default=2000, metadata={"help": "resamples for a judge delta missing from judge.json"})
    seed: int = field(default=0, metadata={"help": "bootstrap seed"})
    ci: float = field(default=0.95, metadata={"help": "confidence level"})


@dataclass
class ReportConfig:
    n_examples: int = field(default=5, metadata={"help": "example questions shown with both answers"})
    example_metric: str = field(default="bertscore_f1", metadata={
        "help": "per-example metric that picks the examples (largest gains, largest losses, a typical one)"})
    max_chars: int = field(default=700, metadata={"help": "longer answers are cut to this many characters"})
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)


# ---------------------------------------------------------------------------------------------
# a tiny document model rendered to both Markdown and HTML
# ---------------------------------------------------------------------------------------------

@dataclass
class Doc:
    blocks: list = field(default_factory=list)

    def h(self, level: int, text: str):
        self.blocks.append(("h", level, text))

    def p(self, text: str, cls: str = ""):
        self.blocks.append(("p", text, cls))

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[Any]], caption: str = "",
              header_groups: Optional[Sequence[tuple[str, int]]] = None):
        self.blocks.append(("table", list(headers), [list(r) for r in rows], caption, header_groups))

    def img(self, path: str, alt: str):
        self.blocks.append(("img", path, alt))

    def pre(self, text: str):
        self.blocks.append(("pre", text))

    def bullets(self, items: Sequence[str]):
        self.blocks.append(("ul", list(items)))


_MD_SPECIAL = re.compile(r"([\\`*_\[\]#|<>~])")


def md_text(s: Any) -> str:
    """User text made inert in Markdown: specials backslash-escaped, newlines -> <br>."""
    s = "" if s is None else str(s)
    s = _MD_SPECIAL.sub(r"\\\1", s)
    return s.replace("\r", "").replace("\n", "<br>")


def render_markdown(doc: Doc) -> str:
    out: list[str] = []
    for b in doc.blocks:
        kind = b[0]
        if kind == "h":
            out.append("#" * b[1] + " " + md_text(b[2]))
        elif kind == "p":
            out.append(md_text(b[1]))
        elif kind == "ul":
            out.append("\n".join(f"- {md_text(x)}" for x in b[1]))
        elif kind == "table":
            _, headers, rows, caption, groups = b
            lines = []
            if groups:
                lines.append("| " + " | ".join(md_text(g) + (" |" * (n - 1)) for g, n in groups) + " |")
                lines.append("|" + "---|" * len(headers))
            lines.append("| " + " | ".join(md_text(h) for h in headers) + " |")
            if not groups:
                lines.append("|" + "---|" * len(headers))
            for r in rows:
                lines.append("| " + " | ".join(md_text(c) for c in r) + " |")
            if caption:
                lines.append("")
                lines.append("*" + md_text(caption) + "*")
            out.append("\n".join(lines))
        elif kind == "img":
            out.append(f"![{md_text(b[2])}]({b[1]})")
        elif kind == "pre":
            text = b[1].replace("```", "ˋˋˋ")
            out.append("```\n" + text + "\n```")
    return "\n\n".join(out) + "\n"


CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#1b1f24;line-height:1.45}
h1{border-bottom:2px solid #d0d7de;padding-bottom:.3em}h2{border-bottom:1px solid #d0d7de;margin-top:2em}
table{border-collapse:collapse;margin:.8em 0;font-size:.92em}
th,td{border:1px solid #d0d7de;padding:4px 9px;vertical-align:top;text-align:left}
th{background:#f3f5f7}td.num{text-align:right;font-variant-numeric:tabular-nums}
caption{caption-side:bottom;font-style:italic;color:#57606a;padding-top:.3em;text-align:left}
tr:nth-child(even) td{background:#fafbfc}
.better{color:#116329;font-weight:600}.worse{color:#a40e26;font-weight:600}.nsd{color:#57606a}
pre{background:#f6f8fa;padding:1em;overflow:auto;font-size:.85em}
img{max-width:100%;border:1px solid #d0d7de;margin:.5em 0}
p.headline{font-size:1.15em;background:#eef6ff;border-left:4px solid #0969da;padding:.6em 1em}
"""

_NUM = re.compile(r"^[+\-−]?\d[\d,]*(\.\d+)?%?$")


def _cell_html(c: Any, header: bool = False) -> str:
    s = "" if c is None else str(c)
    esc = html.escape(s).replace("\n", "<br>")
    tag = "th" if header else "td"
    cls = ""
    if not header:
        if _NUM.match(s.strip()):
            cls = "num"
        elif s == "better":
            cls = "better"
        elif s == "worse":
            cls = "worse"
        elif s == "no significant difference":
            cls = "nsd"
    return f"<{tag}{f' class={chr(34)}{cls}{chr(34)}' if cls else ''}>{esc}</{tag}>"


def render_html(doc: Doc, title: str) -> str:
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"]
    for b in doc.blocks:
        kind = b[0]
        if kind == "h":
            parts.append(f"<h{b[1]}>{html.escape(b[2])}</h{b[1]}>")
        elif kind == "p":
            cls = f' class="{html.escape(b[2])}"' if b[2] else ""
            parts.append(f"<p{cls}>{html.escape(b[1]).replace(chr(10), '<br>')}</p>")
        elif kind == "ul":
            parts.append("<ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in b[1]) + "</ul>")
        elif kind == "table":
            _, headers, rows, caption, groups = b
            t = ["<table>"]
            if caption:
                t.append(f"<caption>{html.escape(caption)}</caption>")
            t.append("<thead>")
            if groups:
                t.append("<tr>" + "".join(f'<th colspan="{n}">{html.escape(g)}</th>' for g, n in groups) + "</tr>")
            t.append("<tr>" + "".join(_cell_html(h, True) for h in headers) + "</tr></thead><tbody>")
            for r in rows:
                t.append("<tr>" + "".join(_cell_html(c) for c in r) + "</tr>")
            t.append("</tbody></table>")
            parts.append("".join(t))
        elif kind == "img":
            parts.append(f'<img src="{html.escape(b[1], quote=True)}" alt="{html.escape(b[2], quote=True)}">')
        elif kind == "pre":
            parts.append(f"<pre>{html.escape(b[1])}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------------------------------------
# pure helpers
# ---------------------------------------------------------------------------------------------

def fmt(v: Any, metric: str = "") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int) or not isinstance(v, float):
        return str(v)
    if metric in ("ref_ppl", "answer_len") or abs(v) >= 100:
        return f"{v:.1f}" if abs(v) < 1e6 else f"{v:.3g}"
    return f"{v:.3f}"


def fmt_delta(mean, lo, hi, metric: str = "") -> str:
    if mean is None:
        return "–"
    def s(v):
        return ("+" if v is not None and v >= 0 else "") + fmt(v, metric)
    return f"{s(mean)} [{s(lo)}, {s(hi)}]"


def judge_key(name: str) -> str:
    """Judge metric name -> key, the judge stage's rule ("Correctness" -> "correctness")."""
    return re.sub(r"[^a-z0-9]+", "_", str(name).lower()).strip("_")


def models_in(rows: Sequence[dict]) -> list[str]:
    present = list(dict.fromkeys(r["model"] for r in rows))
    order = [m for m in MODEL_NAMES if m in present]
    return order + [m for m in present if m not in order]


def describe_by_model(rows: Sequence[dict], models: Sequence[str], metrics: Sequence[str]) -> dict:
    return {(m, k): M.describe([r.get(k) for r in rows if r["model"] == m]) for m in models for k in metrics}


def stats_table(desc: dict, models: Sequence[str], metrics: Sequence[str], names: dict) -> tuple[list, list, list]:
    """Study layout: a row per statistic, a column group per model, a column per metric."""
    headers = ["Stats"] + [names.get(k, k) for _ in models for k in metrics]
    groups = [("", 1)] + [(MODEL_NAMES.get(m, m), len(metrics)) for m in models]
    rows = [[stat] + [fmt(desc[(m, k)][stat], k) for m in models for k in metrics] for stat in STAT_ROWS]
    rows.append(["n"] + [str(desc[(m, k)]["n"]) for m in models for k in metrics])
    return headers, rows, groups


def delta_rows(flat: dict, comparison: str, metrics: Sequence[str], names: dict,
               treat: str, ctrl: str) -> list[list[str]]:
    rows = []
    for k in metrics:
        mean = flat.get(f"{comparison}.{k}.mean")
        if f"{comparison}.{k}.mean" not in flat:
            continue
        lo, hi = flat.get(f"{comparison}.{k}.ci_low"), flat.get(f"{comparison}.{k}.ci_high")
        v = M.verdict(lo if lo is not None else math.nan, hi if hi is not None else math.nan,
                      M.DIRECTION.get(k, 1))
        rows.append([names.get(k, k), fmt(flat.get(f"{ctrl}.{k}.mean"), k), fmt(flat.get(f"{treat}.{k}.mean"), k),
                     fmt_delta(mean, lo, hi, k), {1: "higher", -1: "lower", 0: "–"}[M.DIRECTION.get(k, 1)], v])
    return rows


def pick_examples(per_example: Sequence[dict], metric: str, n: int) -> list[tuple[str, str]]:
    """(qa_id, why): the largest improvements and regressions from fine-tuning on ``metric`` (in
    its good direction) and a typical (median) case."""
    base = {r["qa_id"]: r.get(metric) for r in per_example if r["model"] == "base"}
    ft = {r["qa_id"]: r.get(metric) for r in per_example if r["model"] == "finetuned"}
    diffs = sorted(((ft[q] - base[q], q) for q in ft if q in base and base[q] is not None and ft[q] is not None
                    and math.isfinite(ft[q] - base[q])), key=lambda t: (t[0], t[1]))
    if not diffs or n <= 0:
        return []
    sign = M.DIRECTION.get(metric, 1) or 1
    picks: list[tuple[str, str]] = []
    seen = set()

    def add(q, why):
        if q not in seen and len(picks) < n:
            seen.add(q)
            picks.append((q, why))

    gains = diffs[::-1] if sign > 0 else diffs
    losses = diffs if sign > 0 else diffs[::-1]
    n_gain, n_loss = math.ceil((n - 1) / 2), (n - 1) // 2
    def label(d, improving: bool):
        if d == 0:
            return "no change"
        if (d * sign > 0) == improving:
            return "largest improvement" if improving else "largest regression"
        return "smallest regression" if improving else "smallest improvement"

    for d, q in gains[:max(1, n_gain)]:
        add(q, f"{label(d, True)} in {metric} ({d:+.3f})")
    for d, q in losses[:n_loss]:
        add(q, f"{label(d, False)} in {metric} ({d:+.3f})")
    d, q = diffs[len(diffs) // 2]
    add(q, f"typical: median change in {metric} ({d:+.3f})")
    for d, q in diffs:  # fill up if there were few questions
        add(q, f"change in {metric} ({d:+.3f})")
    return picks


def flatten(d: Any, prefix: str = "") -> dict:
    """Nested dicts -> {"a.b.c": value} (DVC's own way of naming nested metrics)."""
    out: dict = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(d, (int, float, str, bool)) or d is None:
        out[prefix[:-1]] = d
    return out


def clip(s: str, n: int) -> str:
    s = s or ""
    return s if len(s) <= n else s[: n - 1].rstrip() + "…"


def count_lines(path: Path) -> Optional[int]:
    if not path.is_file():
        return None
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


# ---------------------------------------------------------------------------------------------
# plots
# ---------------------------------------------------------------------------------------------

COLORS = {"base": "#8c959f", "finetuned": "#0969da", "base_rag": "#bf8700", "finetuned_rag": "#8250df"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_distributions(rows: Sequence[dict], models: Sequence[str], metrics: Sequence[str], names: dict,
                       path: Path, title: str) -> None:
    plt = _plt()
    ncol = min(4, len(metrics))
    nrow = math.ceil(len(metrics) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.4 * ncol, 3.0 * nrow), squeeze=False)
    for ax, k in zip(axes.flat, metrics):
        data = []
        for m in models:
            vals = [r.get(k) for r in rows if r["model"] == m]
            data.append([v for v in vals if v is not None and math.isfinite(v)])
        bp = ax.boxplot(data, showmeans=True, patch_artist=True, widths=0.6)
        for patch, m in zip(bp["boxes"], models):
            patch.set_facecolor(COLORS.get(m, "#cccccc"))
            patch.set_alpha(0.55)
        ax.set_xticks(range(1, len(models) + 1), [MODEL_NAMES.get(m, m) for m in models], rotation=20, fontsize=8)
        ax.set_title(names.get(k, k), fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)


def plot_deltas(entries: Sequence[tuple[str, str, float, float, float]], path: Path, title: str) -> None:
    """Forest plot: (label, comparison, mean, lo, hi) per row."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 0.42 * len(entries) + 1.4))
    comps = list(dict.fromkeys(e[1] for e in entries))
    palette = ["#0969da", "#8250df", "#bf8700", "#1a7f37"]
    for i, (label, comp, mean, lo, hi) in enumerate(entries):
        y = len(entries) - 1 - i
        c = palette[comps.index(comp) % len(palette)]
        ax.errorbar([mean], [y], xerr=[[mean - lo], [hi - mean]], fmt="o", color=c, capsize=3,
                    label=COMPARISON_NAMES.get(comp, comp) if comp not in [e[1] for e in entries[:i]] else None)
    ax.axvline(0, color="#444", lw=1, ls="--")
    ax.set_yticks(range(len(entries)), [e[0] for e in entries][::-1], fontsize=8)
    ax.set_xlabel("difference of means, with confidence interval")
    ax.set_title(title, fontsize=11)
    ax.grid(axis="x", alpha=0.3)
    if len(comps) > 1:
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# the report
# ---------------------------------------------------------------------------------------------

@dataclass
class Inputs:
    flat: dict
    per_example: list
    answers: list
    judge_flat: Optional[dict] = None
    judge_scores: Optional[list] = None
    eval_stats: Optional[dict] = None
    judge_stats: Optional[dict] = None
    lineage: Optional[dict] = None
    train_metrics: Optional[dict] = None
    data_metrics: Optional[dict] = None


def judge_wide(scores: Sequence[dict]) -> tuple[list[dict], list[str], dict]:
    """Judge rows -> wide rows {qa_id, model, <key>: score}, metric keys in order, key -> name."""
    wide: dict = {}
    keys: dict = {}
    for r in scores:
        k = judge_key(r["metric"])
        keys.setdefault(k, str(r["metric"]))
        w = wide.setdefault((r["qa_id"], r["model"]), {"qa_id": r["qa_id"], "model": r["model"]})
        w[k] = None if r.get("failed") else r.get("score")
    return list(wide.values()), list(keys), keys


def build_report(inp: Inputs, cfg: ReportConfig, assets_dir: Optional[Path] = None) -> Doc:
    """The whole report as a Doc; plots are written into ``assets_dir`` when given."""
    doc = Doc()
    flat, pe = inp.flat, inp.per_example
    models = models_in(pe)
    ci_pct = f"{round(100 * _ci_level(inp))}%"
    eval_metrics = [k for k in EVAL_METRICS if any(k in r for r in pe)]
    doc.h(1, "policytune evaluation report: base vs fine-tuned")

    # ---- headline
    comps_present = [(c, t, b) for c, t, b in _comparisons() if f"{c}.{eval_metrics[0]}.mean" in flat] if eval_metrics else []
    judge_ran = inp.judge_scores is not None and inp.judge_flat is not None
    jrows, jkeys, jnames = judge_wide(inp.judge_scores) if judge_ran else ([], [], {})
    jflat = dict(inp.judge_flat or {})
    if judge_ran:
        _fill_judge_deltas(jflat, jrows, jkeys, cfg)
    verdicts = []
    for k in eval_metrics:
        if M.DIRECTION.get(k, 1) != 0 and f"delta.{k}.ci_low" in flat:
            verdicts.append((EVAL_METRICS[k], _verdict(flat, "delta", k)))
    for k in jkeys:
        if f"delta.{k}.ci_low" in jflat:
            verdicts.append((f"judge {jnames[k]}", _verdict(jflat, "delta", k)))
    n_q = flat.get("n", len({r["qa_id"] for r in pe}))
    if verdicts:
        better = [n for n, v in verdicts if v == "better"]
        worse = [n for n, v in verdicts if v == "worse"]
        nsd = [n for n, v in verdicts if v not in ("better", "worse")]
        doc.p(f"Did fine-tuning help? On {n_q} unseen test questions the fine-tuned model is better on "
              f"{len(better)}, worse on {len(worse)} and not significantly different on {len(nsd)} of "
              f"{len(verdicts)} metrics ({ci_pct} paired bootstrap confidence intervals over questions).",
              "headline")
        items = []
        if better:
            items.append("Better: " + ", ".join(better))
        if worse:
            items.append("Worse: " + ", ".join(worse))
        if nsd:
            items.append("No significant difference: " + ", ".join(nsd))
        doc.bullets(items)
    if not judge_ran:
        doc.p("LLM judge: judge not run (metrics/judge.json and data/judge/scores.jsonl are absent), so the "
              "study's Tables 2 and 3 are not shown.")

    # ---- Table 1 and the other metrics
    doc.h(2, "Table 1: similarity metrics (as in the study)")
    desc = describe_by_model(pe, models, eval_metrics)
    t1 = [k for k in TABLE1 if k in eval_metrics]
    main_models = [m for m in ("finetuned", "base") if m in models]
    if t1 and main_models:
        h, rows, groups = stats_table(desc, main_models, t1, EVAL_METRICS)
        doc.table(h, rows, caption="BERTScore F1 (local encoder), cosine similarity of answer and reference, "
                  "relevance of answer to question, per test question.", header_groups=groups)
    doc.h(2, "All per-example metrics")
    rest = [k for k in eval_metrics if k not in TABLE1]
    for m in main_models + [m for m in models if m not in main_models]:
        doc.h(3, MODEL_NAMES.get(m, m))
        h, rows, _ = stats_table(desc, [m], rest, EVAL_METRICS)
        doc.table(h, rows, caption=f"{MODEL_NAMES.get(m, m)}: BERTScore precision/recall, lexical overlap with the "
                  "reference, perplexity and mean NLL of the reference answer under the model (lower is better), "
                  "answer length.")

    # ---- deltas
    doc.h(2, f"Differences with {ci_pct} confidence intervals")
    doc.p("Each difference is the mean over questions of (treatment − control) on the same question; the "
          "interval is a paired percentile bootstrap over questions. Verdict: better / worse when the "
          "interval excludes 0 (in the metric's good direction), otherwise no significant difference.")
    headers = ["Metric", "Control mean", "Treatment mean", f"Difference [{ci_pct} CI]", "Good", "Verdict"]
    forest = []
    for comp, treat, ctrl in comps_present:
        rows = delta_rows(flat, comp, eval_metrics, EVAL_METRICS, treat, ctrl)
        if judge_ran:
            rows += delta_rows(jflat, comp, jkeys, {k: f"Judge {jnames[k]}" for k in jkeys}, treat, ctrl)
        doc.table(headers, rows, caption=f"{COMPARISON_NAMES.get(comp, comp)} (treatment: "
                  f"{MODEL_NAMES.get(treat, treat)}, control: {MODEL_NAMES.get(ctrl, ctrl)}).")
        for k in eval_metrics:
            if k in ("ref_ppl", "ref_nll", "answer_len"):
                continue  # other scales: in the tables only
            lo, hi, mu = flat.get(f"{comp}.{k}.ci_low"), flat.get(f"{comp}.{k}.ci_high"), flat.get(f"{comp}.{k}.mean")
            if None not in (lo, hi, mu):
                forest.append((EVAL_METRICS[k], comp, mu, lo, hi))
        for k in jkeys:
            lo, hi, mu = jflat.get(f"{comp}.{k}.ci_low"), jflat.get(f"{comp}.{k}.ci_high"), jflat.get(f"{comp}.{k}.mean")
            if None not in (lo, hi, mu):
                forest.append((f"Judge {jnames[k]}", comp, mu, lo, hi))

    # ---- judge tables
    if judge_ran:
        doc.h(2, "Tables 2 and 3: LLM-judge metrics (as in the study)")
        jdesc = describe_by_model(jrows, models_in(jrows), jkeys)
        for i, m in enumerate([m for m in ("finetuned", "base") if m in models_in(jrows)]):
            h, rows, _ = stats_table(jdesc, [m], jkeys, {k: f"{jnames[k]} (judge)" for k in jkeys})
            doc.table(h, rows, caption=f"Table {2 + i}. {MODEL_NAMES.get(m, m)} metrics as scored by the LLM judge "
                      "(0..1; failed judgements excluded and counted below).")
        for m in [m for m in models_in(jrows) if m not in ("finetuned", "base")]:
            h, rows, _ = stats_table(jdesc, [m], jkeys, {k: f"{jnames[k]} (judge)" for k in jkeys})
            doc.table(h, rows, caption=f"{MODEL_NAMES.get(m, m)} metrics as scored by the LLM judge.")
        doc.h(3, "Judge failures")
        fail_rows = []
        for m in models_in(jrows):
            for k in jkeys:
                n_fail = jflat.get(f"{m}.{k}.failures")
                if n_fail is None:
                    n_fail = sum(1 for r in inp.judge_scores if r["model"] == m and judge_key(r["metric"]) == k
                                 and r.get("failed"))
                n_all = sum(1 for r in inp.judge_scores if r["model"] == m and judge_key(r["metric"]) == k)
                fail_rows.append([MODEL_NAMES.get(m, m), jnames[k], str(n_fail), str(n_all)])
        doc.table(["Model", "Metric", "Failed judgements", "Judgements"], fail_rows,
                  caption="A failed judgement (output that never parsed after the retries) has no score; it is "
                  "counted here and left out of the statistics, never silently scored.")
        summary = [[k, fmt(v)] for k, v in sorted(jflat.items())
                   if (k in ("judgements", "judge_calls", "failures", "cache_hits", "n") or k.endswith("empty_answers"))]
        if summary:
            doc.table(["judge.json key", "value"], summary)
        if inp.judge_stats:
            js = inp.judge_stats
            judge_id = js.get("judge", {})
            backend, model = judge_id.get("backend", "?"), str(judge_id.get("model", "?"))
            who = model if model.startswith(f"{backend}:") else f"{backend} {model}"  # not "local local:models/judge"
            doc.p(f"Judge: {who} ({judge_id.get('scoring', '?')} "
                  f"scoring); wall time {fmt(js.get('seconds'))} s, {fmt(js.get('s_per_judgement'))} s per judgement.")

    # ---- plots
    if assets_dir is not None:
        doc.h(2, "Plots")
        dist_metrics = [k for k in ("bertscore_f1", "cosine", "relevance", "token_f1", "rouge_l", "bleu", "ref_nll",
                                    "answer_len") if k in eval_metrics]
        plot_distributions(pe, models, dist_metrics, EVAL_METRICS, assets_dir / "distributions.png",
                           "Per-question metric distributions (box: quartiles, triangle: mean)")
        doc.img(f"{ASSETS}/distributions.png", "Per-question distributions of each metric per model")
        if forest:
            plot_deltas(forest, assets_dir / "deltas.png", f"Differences with {ci_pct} paired bootstrap CIs")
            doc.img(f"{ASSETS}/deltas.png", "Differences of means with confidence intervals")
        if judge_ran and jkeys:
            plot_distributions(jrows, models_in(jrows), jkeys, {k: jnames[k] for k in jkeys},
                               assets_dir / "judge.png", "LLM-judge scores per model")
            doc.img(f"{ASSETS}/judge.png", "LLM-judge score distributions")

    # ---- RAG
    if any(m.endswith("_rag") for m in models):
        doc.h(2, "Retrieval-augmented variants")
        rag_rows = [[EVAL_METRICS[k]] + [fmt(flat.get(f"{m}.{k}.mean"), k) for m in models] for k in eval_metrics]
        doc.table(["Metric (mean)"] + [MODEL_NAMES.get(m, m) for m in models], rag_rows)
        if flat.get("rag.recall_at_k") is not None:
            doc.p(f"Retrieval recall@k (the question's source chunk among the retrieved ones): "
                  f"{fmt(flat['rag.recall_at_k'])}.")

    # ---- examples
    picks = pick_examples(pe, cfg.example_metric, cfg.n_examples)
    if picks:
        doc.h(2, "Example questions")
        by = {(a["qa_id"], a["model"]): a for a in inp.answers}
        scores = {(r["qa_id"], r["model"]): r for r in pe}
        show = [k for k in ("bertscore_f1", "cosine", "token_f1", "ref_ppl") if k in eval_metrics]
        for i, (q, why) in enumerate(picks, 1):
            a_base, a_ft = by.get((q, "base"), {}), by.get((q, "finetuned"), {})
            question = a_ft.get("question") or a_base.get("question", "")
            reference = a_ft.get("reference") or a_base.get("reference", "")
            doc.h(3, f"Example {i} ({q}): {why}")
            doc.p("Q: " + clip(question, cfg.max_chars))
            row_text = [clip(reference, cfg.max_chars), clip(a_base.get("answer", ""), cfg.max_chars),
                        clip(a_ft.get("answer", ""), cfg.max_chars)]
            row_scores = ["–"] + ["; ".join(f"{EVAL_METRICS[k]} {fmt(scores.get((q, m), {}).get(k), k)}" for k in show)
                                  for m in ("base", "finetuned")]
            doc.table(["Reference", "Base answer", "Fine-tuned answer"], [row_text, row_scores])

    # ---- run facts
    if inp.eval_stats:
        doc.h(2, "Evaluation run")
        es = inp.eval_stats
        rows = []
        for m, t in es.get("models", {}).items():
            rows.append([MODEL_NAMES.get(m, m), str(t.get("tokens")), fmt(t.get("generate_s")),
                         fmt(t.get("tokens_per_s")), str(t.get("truncated")), str(t.get("empty_answers")),
                         str(t.get("dtype", ""))])
        doc.table(["Model", "Generated tokens", "Generation s", "Tokens/s", "Hit max_new_tokens",
                   "Empty answers", "dtype"], rows,
                  caption=f"evaluate wall time {fmt(es.get('seconds'), 'answer_len')} s for {es.get('questions', '?')} "
                  f"questions; {_gen_desc(es.get('params') or {})}.")

    if inp.train_metrics:
        doc.h(2, "Training (metrics/train.json)")
        doc.table(["Key", "Value"], [[k, fmt(v)] for k, v in flatten(inp.train_metrics).items()])

    # ---- lineage
    doc.h(2, "Data lineage")
    lin = inp.lineage or {}
    doc.table(["Item", "Value"], lin.get("facts", []))
    if inp.data_metrics:
        doc.table(["Pipeline count (metrics/data.json)", "Value"],
                  [[k, fmt(v)] for k, v in flatten(inp.data_metrics).items()],
                  caption="What every data stage kept, dropped and why, as counted by the stages.")
    if lin.get("models"):
        doc.table(["Model folder", "Role", "Spec", "Source", "sha256", "dtype", "Params", "Template sha"],
                  lin["models"], caption="models/*/policytune_model.json written by prepare_models.")
    if lin.get("params"):
        doc.h(3, "params.yaml")
        doc.pre(lin["params"])
    return doc


def _gen_desc(p: dict) -> str:
    if not p:
        return "generation params unknown"
    mode = "sampling" if p.get("do_sample") else "greedy"
    return (f"{mode}, max_new_tokens {p.get('max_new_tokens', '?')}, {p.get('batching', 'static')} batching of "
            f"{p.get('batch_size', '?')}, dtype {p.get('dtype', '?')}")


def _comparisons():
    from policytune.evaluation.config import COMPARISONS

    return COMPARISONS


def _ci_level(inp: Inputs) -> float:
    try:
        return float(inp.eval_stats["params"]["bootstrap"]["ci"])
    except (TypeError, KeyError, ValueError):
        return 0.95


def _verdict(flat: dict, comp: str, k: str) -> str:
    lo, hi = flat.get(f"{comp}.{k}.ci_low"), flat.get(f"{comp}.{k}.ci_high")
    return M.verdict(math.nan if lo is None else lo, math.nan if hi is None else hi, M.DIRECTION.get(k, 1))


def _fill_judge_deltas(jflat: dict, jrows: list, jkeys: list, cfg: ReportConfig) -> None:
    """Judge deltas come from metrics/judge.json; any it lacks are computed from the scores."""
    present = set(r["model"] for r in jrows)
    for comp, treat, ctrl in _comparisons():
        if treat not in present or ctrl not in present:
            continue
        for k in jkeys:
            if f"{comp}.{k}.mean" in jflat:
                continue
            _, a, b = M.pair_by_key(jrows, treat, ctrl, k)
            s = M.paired_bootstrap(a, b, cfg.bootstrap.n_resamples, cfg.bootstrap.ci, cfg.bootstrap.seed)
            for stat in ("mean", "ci_low", "ci_high"):
                jflat[f"{comp}.{k}.{stat}"] = M._round(s[stat])
        for m in (treat, ctrl):
            for k in jkeys:
                if f"{m}.{k}.mean" not in jflat:
                    jflat[f"{m}.{k}.mean"] = M._round(M.describe([r.get(k) for r in jrows if r["model"] == m])["mean"])


def collect_lineage(root: Path = Path(".")) -> dict:
    facts = []
    raw = root / "data/raw/manifest.jsonl"
    chunks = root / "data/chunks.jsonl"
    if raw.is_file():
        facts.append(["Corpus hash (sha256 of data/raw/manifest.jsonl)", sha256_file(raw)])
        facts.append(["Pages in the raw manifest", str(count_lines(raw))])
    if chunks.is_file():
        facts.append(["Chunks hash (sha256 of data/chunks.jsonl)", sha256_file(chunks)])
        facts.append(["Chunks", str(count_lines(chunks))])
    if not raw.is_file() and not chunks.is_file():
        facts.append(["Corpus hash", "unknown (data/raw/manifest.jsonl and data/chunks.jsonl absent)"])
    qa = root / "data/qa.jsonl"
    if qa.is_file():
        facts.append(["QA pairs generated (data/qa.jsonl)", str(count_lines(qa))])
    for split in ("train", "val", "test"):
        p = root / f"data/split/{split}.jsonl"
        if p.is_file():
            facts.append([f"Split {split}", f"{count_lines(p)} rows, sha256 {sha256_file(p)[:16]}"])
    aug = root / "data/augment/train.jsonl"
    if aug.is_file():
        facts.append(["Augmented train rows (data/augment/train.jsonl)", str(count_lines(aug))])
    train_info = root / "models/adapter/policytune_train.json"
    if train_info.is_file():
        try:
            info = read_json(train_info)
            keep = {k: v for k, v in info.items() if not isinstance(v, (dict, list))}
            facts.append(["Adapter (models/adapter/policytune_train.json)",
                          ", ".join(f"{k}={v}" for k, v in sorted(keep.items()))])
        except (OSError, ValueError) as e:
            facts.append(["Adapter train record", f"unreadable: {e}"])
    models = []
    for mf in sorted((root / "models").glob("*/policytune_model.json")):
        try:
            d = read_json(mf)
        except (OSError, ValueError):
            continue
        src = d.get("source") or {}
        models.append([mf.parent.name, str(d.get("role", "")), str(d.get("spec", "")),
                       str(src.get("upstream") or src.get("name") or src.get("path") or ""),
                       str(src.get("sha256", ""))[:16], str(d.get("dtype", "")),
                       f"{d['n_params'] / 1e6:.1f}M" if isinstance(d.get("n_params"), (int, float)) else "",
                       str(d.get("chat_template_sha", ""))])
    params_text = None
    pf = root / "params.yaml"
    if pf.is_file():
        try:
            params_text = yaml.safe_dump(yaml.safe_load(pf.read_text()) or {}, sort_keys=False,
                                         allow_unicode=True).strip()
        except yaml.YAMLError as e:
            params_text = f"(params.yaml unreadable: {e})"
    return {"facts": facts, "models": models, "params": params_text}


def load_inputs(eval_json: Path = EVAL_JSON, per_example: Path = PER_EXAMPLE, answers: Path = ANSWERS,
                judge_json: Path = JUDGE_JSON, judge_scores: Path = JUDGE_SCORES, eval_stats: Path = EVAL_STATS,
                judge_stats: Path = JUDGE_STATS, root: Path = Path("."), train_json: Path = TRAIN_JSON,
                data_json: Path = DATA_JSON) -> Inputs:
    for p in (eval_json, per_example, answers):
        if not Path(p).is_file():
            raise SystemExit(f"report: {p} not found; run the evaluate stage first")
    judge_ok = Path(judge_json).is_file() and Path(judge_scores).is_file()
    if Path(judge_json).is_file() != Path(judge_scores).is_file():
        log.warning("only one of %s and %s exists; reporting the judge as not run", judge_json, judge_scores)
    return Inputs(
        flat=read_json(eval_json), per_example=read_jsonl(per_example), answers=read_jsonl(answers),
        judge_flat=read_json(judge_json) if judge_ok else None,
        judge_scores=read_jsonl(judge_scores) if judge_ok else None,
        eval_stats=read_json(eval_stats) if Path(eval_stats).is_file() else None,
        judge_stats=read_json(judge_stats) if judge_ok and Path(judge_stats).is_file() else None,
        lineage=collect_lineage(root),
        train_metrics=read_json(train_json) if Path(train_json).is_file() else None,
        data_metrics=read_json(data_json) if Path(data_json).is_file() else None)


def write_report(inp: Inputs, cfg: ReportConfig, out_md: Path = OUT_MD, out_html: Path = OUT_HTML) -> Doc:
    assets = out_md.parent / ASSETS
    doc = build_report(inp, cfg, assets)
    atomic_write_text(out_md, render_markdown(doc))
    atomic_write_text(out_html, render_html(doc, "policytune evaluation report"))
    return doc


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params", default=None, help="params.yaml path (default: ./params.yaml)")
    ap.add_argument("--out-md", default=str(OUT_MD))
    ap.add_argument("--out-html", default=str(OUT_HTML))
    args = ap.parse_args(argv)
    try:
        cfg = load_section(ReportConfig, "report", args.params)
    except ParamsError as e:
        raise SystemExit(f"report: {e}") from None
    inp = load_inputs()
    write_report(inp, cfg, Path(args.out_md), Path(args.out_html))
    log.info("wrote %s, %s and %s/ (judge %s)", args.out_md, args.out_html, Path(args.out_md).parent / ASSETS,
             "included" if inp.judge_scores is not None else "not run")


if __name__ == "__main__":
    main()
