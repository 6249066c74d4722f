"""The report's plots (matplotlib, headless): per-model metric distributions and a forest plot
of the deltas with their confidence intervals."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from policytune.report.format import COMPARISON_NAMES, MODEL_NAMES

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
