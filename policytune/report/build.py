"""The report itself: its configuration (``params.yaml`` section ``report``), the document built
section by section from the inputs, and the Markdown/HTML files with their plots."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from policytune.core.params import NonNegInt, PositiveInt
from policytune.core.records import atomic_write_text, flatten
from policytune.evaluation import metrics as M
from policytune.evaluation.config import COMPARISONS, VARIANTS, best_variant
from policytune.evaluation.metrics import BootstrapConfig
from policytune.report.document import Doc, render_html, render_markdown
from policytune.report.format import COMPARISON_NAMES, EVAL_METRICS, MODEL_NAMES, TABLE1, clip, fmt, judge_key
from policytune.report.inputs import Inputs
from policytune.report.plots import plot_deltas, plot_distributions
from policytune.report.tables import delta_rows, describe_by_model, judge_wide, models_in, pick_examples, stats_table

OUT_MD = Path("metrics/report.md")
OUT_HTML = Path("metrics/report.html")
ASSETS = "report_assets"  # beside the report


@dataclass
class ReportConfig:
    n_examples: NonNegInt = field(default=5, metadata={"help": "example questions shown with both answers"})
    example_metric: Literal["fact_recall", "all_facts", "contradiction", "bertscore_p", "bertscore_r", "bertscore_f1",
                            "cosine", "relevance", "token_f1", "rouge_l", "bleu", "answer_len", "ref_ppl", "ref_nll",
                            "looping"] = field(default="bertscore_f1", metadata={
        "help": "per-example metric that picks the examples (largest gains, largest losses, a typical one)"})
    max_chars: PositiveInt = field(default=700, metadata={"help": "longer answers are cut to this many characters"})
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)


@dataclass
class _Facts:
    """What the sections read: the inputs and what is derived from them once, up front."""
    inp: Inputs
    cfg: ReportConfig
    flat: dict
    pe: list
    models: list
    ci_pct: str
    eval_metrics: list
    comps_present: list
    judge_ran: bool
    jrows: list
    jkeys: list
    jnames: dict
    jflat: dict


def _facts(inp: Inputs, cfg: ReportConfig) -> _Facts:
    flat, pe = inp.flat, inp.per_example
    models = models_in(pe)
    ci_pct = f"{round(100 * _ci_level(inp))}%"
    eval_metrics = [k for k in EVAL_METRICS if any(k in r for r in pe)]
    comps_present = [(c, t, b) for c, t, b in COMPARISONS if f"{c}.{eval_metrics[0]}.mean" in flat] if eval_metrics else []
    judge_ran = inp.judge_scores is not None and inp.judge_flat is not None
    jrows, jkeys, jnames = judge_wide(inp.judge_scores) if judge_ran else ([], [], {})
    jflat = dict(inp.judge_flat or {})
    if judge_ran:
        _fill_judge_deltas(jflat, jrows, jkeys, cfg)
    return _Facts(inp, cfg, flat, pe, models, ci_pct, eval_metrics, comps_present, judge_ran, jrows, jkeys,
                  jnames, jflat)


def build_report(inp: Inputs, cfg: ReportConfig, assets_dir: Optional[Path] = None) -> Doc:
    """The whole report as a Doc; plots are written into ``assets_dir`` when given."""
    doc = Doc()
    f = _facts(inp, cfg)
    doc.h(1, "policytune evaluation report: base vs fine-tuned")
    _variants(doc, f)
    _headline(doc, f)
    _similarity_tables(doc, f)
    forest = _deltas(doc, f)
    if f.judge_ran:
        _judge_tables(doc, f)
        _judge_probe(doc, f)
    _forgetting(doc, f)
    if assets_dir is not None:
        _plots(doc, f, forest, assets_dir)
    if any(m.endswith("_rag") for m in f.models):
        _rag(doc, f)
    _examples(doc, f)
    if inp.eval_stats:
        _evaluation_run(doc, inp.eval_stats)
    if inp.train_metrics:
        _training(doc, inp.train_metrics)
    if inp.render_stats:
        _retention(doc, inp.render_stats)
    _lineage(doc, inp)
    return doc


def _ci_cell(flat: dict, key: str, metric: str = "") -> str:
    from policytune.report.format import fmt_delta
    return fmt_delta(flat.get(f"{key}.mean"), flat.get(f"{key}.ci_low"), flat.get(f"{key}.ci_high"), metric)


def _variants(doc: Doc, f: _Facts) -> None:
    """The answer a reader wants first: which variant answers best, and did fine-tuning help,
    with and without retrieval (fact recall and judge Correctness, with CIs)."""
    flat, jflat = f.flat, f.jflat
    variants = [v for v in VARIANTS if f"{v}.fact_recall.mean" in flat]
    if not variants:
        return
    best = best_variant(flat)
    doc.h(2, "Headline: which variant answers best")
    cols = [("fact_recall", flat), ("all_facts", flat), ("contradiction", flat), ("bertscore_f1", flat),
            ("cosine", flat)]
    rows = []
    for v in variants:
        row = [MODEL_NAMES.get(v, v) + (" (best)" if v == best else "")]
        row += [fmt(flat.get(f"{v}.{k}.mean"), k) + f" [{fmt(flat.get(f'{v}.{k}.ci_low'), k)}, "
                f"{fmt(flat.get(f'{v}.{k}.ci_high'), k)}]" for k, src in cols]
        corr = jflat.get(f"{v}.correctness.mean") if f.judge_ran else None
        row.append("–" if corr is None else fmt(corr) + (f" [{fmt(jflat.get(f'{v}.correctness.ci_low'))}, "
                                                         f"{fmt(jflat.get(f'{v}.correctness.ci_high'))}]"
                                                         if jflat.get(f"{v}.correctness.ci_low") is not None else ""))
        row.append(str(flat.get(f"{v}.looping_answers", "–")))
        rows.append(row)
    doc.table(["Variant"] + [EVAL_METRICS[k] for k, _ in cols] + ["Judge Correctness", "Looping answers"], rows,
              caption=f"Means over the {flat.get('n', '?')} test questions with {f.ci_pct} bootstrap CIs. Fact recall: "
              "the share of the reference's key facts (amounts, durations, dates, percentages, form and article "
              "ids, roles) the answer states; All facts: every one stated; Contradiction: another value for a "
              "slot the reference fills (lower is better). Questions whose reference states no key fact are "
              "left out of the fact columns.")
    lines = [f"Best variant by fact recall: {MODEL_NAMES.get(best, best)} — the chatbot "
             "(`policytune chat|serve`) answers with it unless told otherwise."]
    for comp, label in (("delta", "without retrieval (fine-tuned − base)"),
                        ("delta_rag", "with retrieval (fine-tuned + RAG − base + RAG)")):
        if f"{comp}.fact_recall.mean" not in flat:
            continue
        text = (f"Fine-tuning {label}: fact recall {_ci_cell(flat, f'{comp}.fact_recall')} "
                f"({_verdict(flat, comp, 'fact_recall')})")
        if f.judge_ran and f"{comp}.correctness.mean" in jflat:
            text += (f"; judge Correctness {_ci_cell(jflat, f'{comp}.correctness')} "
                     f"({_verdict(jflat, comp, 'correctness')})")
        lines.append(text + ".")
    if flat.get("rag.recall_at_k") is not None:
        lines.append(f"Retrieval: the question's source chunk is among the top {f.inp.eval_stats.get('rag', {}).get('top_k', 'k') if f.inp.eval_stats else 'k'} "
                     f"for {fmt(flat['rag.recall_at_k'])} of the questions with a known source chunk.")
    if flat.get("coverage.with_gold_chunk") is not None:
        cov = (f"Coverage: {flat.get('coverage.with_gold_chunk')} of {flat.get('coverage.questions')} test questions "
               "have a source chunk")
        if flat.get("coverage.gold_chunk_in_training") is not None:
            cov += f", and for {flat['coverage.gold_chunk_in_training']} of them that chunk produced training pairs"
        lines.append(cov + ".")
    doc.bullets(lines)


def _judge_probe(doc: Doc, f: _Facts) -> None:
    """How far to trust the judge: its Correctness on synthetic answers of known quality."""
    j = f.jflat
    if j.get("probe.exact.mean") is None:
        return
    doc.h(3, "Judge probe: does the judge's scale separate?")
    kinds = [("exact", "the reference itself"), ("number_changed", "the reference with one number changed"),
             ("vague", "a vague non-answer"), ("other", "the reference of another question")]
    doc.table(["Probe answer", "What it is", "Judge Correctness (mean)"],
              [[k, what, fmt(j.get(f"probe.{k}.mean"))] for k, what in kinds if j.get(f"probe.{k}.mean") is not None],
              caption=f"AUC exact vs all wrong answers: {fmt(j.get('probe.auc'))}; exact vs one number changed: "
              f"{fmt(j.get('probe.auc_number_changed'))}; {j.get('probe.n', '?')} questions. The target is exact ≥ 0.8, "
              "wrong ≤ 0.2, AUC ≥ 0.95: " + ("met." if j.get("probe.separates") else "NOT met, so read the judge's "
                                               "differences with care.")
              + " The default Correctness score temperature (judge.score_temperature) was fitted on this probe, "
              "so the probe is not an independent check of that one number; the ranking (AUC) does not depend on it.")


def _forgetting(doc: Doc, f: _Facts) -> None:
    """Did fine-tuning cost general ability? The shipped general-skill set, closed-book."""
    flat = f.flat
    if flat.get("general.delta.accuracy.mean") is None:
        return
    doc.h(2, "Forgetting check: general skills")
    lo = flat.get("general.delta.accuracy.ci_low")
    doc.p(f"On {flat.get('general.n', '?')} general questions (data/general_skills.jsonl: world facts, arithmetic, "
          f"units, language, science; an answer counts when it states an accepted answer) the base model answers "
          f"{fmt(flat.get('general.base.accuracy.mean'))} and the fine-tuned model "
          f"{fmt(flat.get('general.finetuned.accuracy.mean'))}: difference "
          f"{_ci_cell(flat, 'general.delta.accuracy')}. "
          + ("Fine-tuning cost at most 0.05 of general ability (lower CI bound ≥ −0.05)."
             if lo is not None and lo >= -0.05 else
             "The lower CI bound is below −0.05: fine-tuning may have cost general ability."))


def _headline(doc: Doc, f: _Facts) -> None:
    """Did fine-tuning help? The verdict counts, then "judge not run" when it did not."""
    flat, pe, jflat, jnames = f.flat, f.pe, f.jflat, f.jnames
    verdicts = []
    for k in f.eval_metrics:
        if M.DIRECTION.get(k, 1) != 0 and f"delta.{k}.ci_low" in flat:
            verdicts.append((EVAL_METRICS[k], _verdict(flat, "delta", k)))
    for k in f.jkeys:
        if f"delta.{k}.ci_low" in jflat:
            verdicts.append((f"judge {jnames[k]}", _verdict(jflat, "delta", k)))
    n_q = flat.get("n", len({r["qa_id"] for r in pe}))
    if verdicts:
        better = [n for n, v in verdicts if v == "better"]
        worse = [n for n, v in verdicts if v == "worse"]
        nsd = [n for n, v in verdicts if v not in ("better", "worse")]
        doc.p(f"Did fine-tuning help? On {n_q} unseen test questions the fine-tuned model is better on "
              f"{len(better)}, worse on {len(worse)} and not significantly different on {len(nsd)} of "
              f"{len(verdicts)} metrics ({f.ci_pct} paired bootstrap confidence intervals over questions).",
              "headline")
        items = []
        if better:
            items.append("Better: " + ", ".join(better))
        if worse:
            items.append("Worse: " + ", ".join(worse))
        if nsd:
            items.append("No significant difference: " + ", ".join(nsd))
        doc.bullets(items)
    if not f.judge_ran:
        doc.p("LLM judge: judge not run (metrics/judge.json and data/judge/scores.jsonl are absent), so the "
              "study's Tables 2 and 3 are not shown.")


def _similarity_tables(doc: Doc, f: _Facts) -> None:
    """Table 1 of the study and the same statistics for every other per-example metric."""
    pe, models, eval_metrics = f.pe, f.models, f.eval_metrics
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


def _deltas(doc: Doc, f: _Facts) -> list:
    """A table of differences per comparison; returns the forest plot's (label, comparison, mean,
    lo, hi) rows."""
    flat, jflat, jkeys, jnames, eval_metrics, ci_pct = f.flat, f.jflat, f.jkeys, f.jnames, f.eval_metrics, f.ci_pct
    doc.h(2, f"Differences with {ci_pct} confidence intervals")
    doc.p("Each difference is the mean over questions of (treatment − control) on the same question; the "
          "interval is a paired percentile bootstrap over questions. Verdict: better / worse when the "
          "interval excludes 0 (in the metric's good direction), otherwise no significant difference.")
    headers = ["Metric", "Control mean", "Treatment mean", f"Difference [{ci_pct} CI]", "Good", "Verdict"]
    forest = []
    for comp, treat, ctrl in f.comps_present:
        rows = delta_rows(flat, comp, eval_metrics, EVAL_METRICS, treat, ctrl)
        if f.judge_ran:
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
    return forest


def _judge_tables(doc: Doc, f: _Facts) -> None:
    """Tables 2 and 3 of the study (LLM-judge metrics), judge failures and the judge's run facts."""
    inp, jrows, jkeys, jnames, jflat = f.inp, f.jrows, f.jkeys, f.jnames, f.jflat
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


def _plots(doc: Doc, f: _Facts, forest: list, assets_dir: Path) -> None:
    """The plots, written into ``assets_dir`` and referenced from the document."""
    doc.h(2, "Plots")
    dist_metrics = [k for k in ("bertscore_f1", "cosine", "relevance", "token_f1", "rouge_l", "bleu", "ref_nll",
                                "answer_len") if k in f.eval_metrics]
    plot_distributions(f.pe, f.models, dist_metrics, EVAL_METRICS, assets_dir / "distributions.png",
                       "Per-question metric distributions (box: quartiles, triangle: mean)")
    doc.img(f"{ASSETS}/distributions.png", "Per-question distributions of each metric per model")
    if forest:
        plot_deltas(forest, assets_dir / "deltas.png", f"Differences with {f.ci_pct} paired bootstrap CIs")
        doc.img(f"{ASSETS}/deltas.png", "Differences of means with confidence intervals")
    if f.judge_ran and f.jkeys:
        plot_distributions(f.jrows, models_in(f.jrows), f.jkeys, {k: f.jnames[k] for k in f.jkeys},
                           assets_dir / "judge.png", "LLM-judge scores per model")
        doc.img(f"{ASSETS}/judge.png", "LLM-judge score distributions")


def _rag(doc: Doc, f: _Facts) -> None:
    """Means of every model including the retrieval-augmented ones, and retrieval recall@k."""
    flat, models = f.flat, f.models
    doc.h(2, "Retrieval-augmented variants")
    rag_rows = [[EVAL_METRICS[k]] + [fmt(flat.get(f"{m}.{k}.mean"), k) for m in models] for k in f.eval_metrics]
    doc.table(["Metric (mean)"] + [MODEL_NAMES.get(m, m) for m in models], rag_rows)
    if flat.get("rag.recall_at_k") is not None:
        doc.p(f"Retrieval recall@k (the question's source chunk among the retrieved ones): "
              f"{fmt(flat['rag.recall_at_k'])}.")


def _examples(doc: Doc, f: _Facts) -> None:
    """Example questions with the reference and both answers side by side."""
    cfg, pe = f.cfg, f.pe
    picks = pick_examples(pe, cfg.example_metric, cfg.n_examples)
    if picks:
        doc.h(2, "Example questions")
        by = {(a["qa_id"], a["model"]): a for a in f.inp.answers}
        scores = {(r["qa_id"], r["model"]): r for r in pe}
        show = [k for k in ("bertscore_f1", "cosine", "token_f1", "ref_ppl") if k in f.eval_metrics]
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


def _evaluation_run(doc: Doc, es: dict) -> None:
    """Timings and generation settings of the evaluate run (data/stats/evaluate.json)."""
    doc.h(2, "Evaluation run")
    rows = []
    for m, t in es.get("models", {}).items():
        rows.append([MODEL_NAMES.get(m, m), str(t.get("tokens")), fmt(t.get("generate_s")),
                     fmt(t.get("tokens_per_s")), str(t.get("truncated")), str(t.get("empty_answers")),
                     str(t.get("dtype", ""))])
    doc.table(["Model", "Generated tokens", "Generation s", "Tokens/s", "Hit max_new_tokens",
               "Empty answers", "dtype"], rows,
              caption=f"evaluate wall time {fmt(es.get('seconds'), 'answer_len')} s for {es.get('questions', '?')} "
              f"questions; {_gen_desc(es.get('params') or {})}.")


def _training(doc: Doc, train_metrics: dict) -> None:
    doc.h(2, "Training (metrics/train.json)")
    doc.table(["Key", "Value"], [[k, fmt(v)] for k, v in flatten(train_metrics, scalars_only=True).items()])


def _retention(doc: Doc, rs: dict) -> None:
    """How much of the pages' main text reached the PDFs, and which pages lost some."""
    ret = rs.get("retention") or {}
    if not ret:
        return
    doc.h(2, "Corpus: what reached the PDFs (data/stats/render.json)")
    share = ret.get("kept_share")
    doc.p(f"{ret.get('pages', 0)} pages have a PDF; together their PDFs hold "
          f"{f'{100 * share:.1f}%' if share is not None else '?'} of the pages' main text "
          f"({fmt(ret.get('pdf_chars'))} of {fmt(ret.get('main_chars'))} characters; main text = visible text "
          f"{fmt(ret.get('visible_chars'))} minus chrome {fmt(ret.get('chrome_chars'))}). "
          f"Lowest page: {fmt(ret.get('min'))}. {ret.get('pages_below', 0)} page(s) below render.min_retention "
          f"{fmt(ret.get('min_retention'))}; {rs.get('low_retention', 0)} flagged low_retention. Headings (sections) "
          f"found {fmt((rs.get('sections') or {}).get('found'))}, kept {fmt((rs.get('sections') or {}).get('kept'))}. "
          f"Rejected pages by reason: {rs.get('rejected_by_reason') or 'none'}.")
    low = rs.get("low_retention_pages") or []
    if low:
        doc.table(["Page", "Status", "Retention", "PDF chars", "Main chars"],
                  [[r.get("url", ""), r.get("status", ""), fmt(r.get("retention")), fmt(r.get("pdf_chars")),
                    fmt(r.get("main_chars"))] for r in low],
                  caption="Pages whose PDF holds less than render.min_retention of their main text.")


def _lineage(doc: Doc, inp: Inputs) -> None:
    """Corpus hash, counts and split sizes, pipeline counts, model manifests and params.yaml."""
    doc.h(2, "Data lineage")
    lin = inp.lineage or {}
    doc.table(["Item", "Value"], lin.get("facts", []))
    if inp.data_metrics:
        doc.table(["Pipeline count (metrics/data.json)", "Value"],
                  [[k, fmt(v)] for k, v in flatten(inp.data_metrics, scalars_only=True).items()],
                  caption="What every data stage kept, dropped and why, as counted by the stages.")
    if lin.get("models"):
        doc.table(["Model folder", "Role", "Spec", "Source", "sha256", "dtype", "Params", "Template sha"],
                  lin["models"], caption="models/*/policytune_model.json written by prepare_models.")
    if lin.get("params"):
        doc.h(3, "params.yaml")
        doc.pre(lin["params"])


def _gen_desc(p: dict) -> str:
    if not p:
        return "generation params unknown"
    mode = "sampling" if p.get("do_sample") else "greedy"
    return (f"{mode}, max_new_tokens {p.get('max_new_tokens', '?')}, {p.get('batching', 'static')} batching of "
            f"{p.get('batch_size', '?')}, dtype {p.get('dtype', '?')}")


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
    for comp, treat, ctrl in COMPARISONS:
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


def write_report(inp: Inputs, cfg: ReportConfig, out_md: Path = OUT_MD, out_html: Path = OUT_HTML) -> Doc:
    assets = out_md.parent / ASSETS
    doc = build_report(inp, cfg, assets)
    atomic_write_text(out_md, render_markdown(doc))
    atomic_write_text(out_html, render_html(doc, "policytune evaluation report"))
    return doc
