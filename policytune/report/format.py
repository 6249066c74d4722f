"""Display names and number/text formatting of the report (shared by its tables, plots and
document)."""

from __future__ import annotations

import math
import re
from typing import Any

# Display names, in report order.
EVAL_METRICS = {
    "fact_recall": "Fact recall", "all_facts": "All facts stated", "contradiction": "Contradiction",
    "bertscore_f1": "BERTScore F1", "bertscore_p": "BERTScore P", "bertscore_r": "BERTScore R",
    "cosine": "Cosine similarity", "relevance": "Relevance", "token_f1": "Token F1", "rouge_l": "ROUGE-L",
    "bleu": "BLEU", "ref_ppl": "Reference perplexity", "ref_nll": "Reference NLL", "answer_len": "Answer length (words)",
    "looping": "Looping answer",
}
TABLE1 = ("bertscore_f1", "cosine", "relevance")  # the study's Table 1 columns
MODEL_NAMES = {"base": "Base", "finetuned": "Fine-tuned", "base_rag": "Base + RAG", "finetuned_rag": "Fine-tuned + RAG"}
COMPARISON_NAMES = {
    "delta": "Fine-tuned − base", "delta_rag": "Fine-tuned + RAG − base + RAG",
    "rag_effect_base": "Base + RAG − base", "rag_effect_finetuned": "Fine-tuned + RAG − fine-tuned",
}
STAT_ROWS = ("mean", "std", "min", "25%", "50%", "75%", "max")


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



def clip(s: str, n: int) -> str:
    s = s or ""
    return s if len(s) <= n else s[: n - 1].rstrip() + "…"

