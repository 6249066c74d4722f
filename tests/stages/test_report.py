"""report stage on fixture metrics: the study's tables, verdicts from the CIs, judge tables or
"judge not run", escaped user text, and the HTML rendered by headless Chromium."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from policytune.core.records import write_json, write_jsonl
from policytune.evaluation import metrics as M
from policytune.evaluation.config import COMPARISONS, METRICS
from stages.report import main
from tests.helpers.report_rows import EVIL, JUDGE, N, eval_flat, fixture_rows, judge_scores

@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A repository-like folder with evaluate outputs and lineage files."""
    monkeypatch.chdir(tmp_path)
    pe, answers = fixture_rows()
    write_jsonl("data/eval/per_example.jsonl", pe)
    write_jsonl("data/eval/answers.jsonl", answers)
    write_json("metrics/eval.json", eval_flat(pe))
    write_json("data/stats/evaluate.json", {"models": {"base": {"tokens": 480, "generate_s": 2.0, "tokens_per_s": 240.0,
                                                                  "truncated": 1, "empty_answers": 0, "dtype": "float32"}},
                                            "questions": N, "seconds": 12.5,
                                            "params": {"bootstrap": {"ci": 0.95}}})
    write_jsonl("data/raw/manifest.jsonl", [{"url": "https://example.invalid/a", "sha256": "00"}])
    write_jsonl("data/chunks.jsonl", [{"chunk_id": "c1", "text": "t"}])
    write_jsonl("data/qa.jsonl", [{"qa_id": f"x{i}"} for i in range(60)])
    for split, n in (("train", 42), ("val", 9), ("test", N)):
        write_jsonl(f"data/split/{split}.jsonl", [{"qa_id": f"{split}{i}"} for i in range(n)])
    write_json("models/student/policytune_model.json", {
        "role": "student", "spec": "smollm2-135m-instruct", "kind": "causal_lm", "dtype": "bfloat16",
        "n_params": 134515008, "chat_template_sha": "abcd", "source": {"name": "smollm2", "sha256": "f" * 64}})
    write_json("metrics/train.json", {"best_step": 40, "best_eval_loss": 1.23, "base_eval_loss": 2.5})
    write_json("metrics/data.json", {"scrape": {"ok": 16, "failed_by_reason": {"http_404": 1}}})
    Path("params.yaml").write_text(yaml.safe_dump({"evaluate": {"max_new_tokens": 64, "system_prompt": EVIL},
                                                   "report": {"n_examples": 4}}))
    return tmp_path


def _verdict_of(md: str, label: str, caption_start: str) -> str:
    section = md.split(caption_start, 1)[0]
    row = [line for line in section.splitlines() if line.startswith(f"| {label} |")][-1]
    return row.strip("|").split("|")[-1].strip()


def test_report_without_judge(workdir):
    main([])
    md = Path("metrics/report.md").read_text()
    html_text = Path("metrics/report.html").read_text()
    # the study's Table 1 layout: stats rows, model column groups
    assert "Table 1" in md
    for stat in ("mean", "std", "min", "25%", "50%", "75%", "max"):
        assert re.search(rf"^\| {re.escape(stat)} \| [0-9.]+ \|", md, re.M), stat
    assert "|  | Fine-tuned | | | Base | | |" in md
    # verdicts follow the CIs and the metric's direction
    cap = "*Fine-tuned − base"
    assert _verdict_of(md, "BERTScore F1", cap) == "better"
    assert _verdict_of(md, "Token F1", cap) == "better"
    assert _verdict_of(md, "Reference perplexity", cap) == "better"  # lower perplexity is better
    assert _verdict_of(md, "Cosine similarity", cap) == "no significant difference"
    assert "judge not run" in md and "judge not run" in html_text
    # lineage
    assert "Corpus hash (sha256 of data/raw/manifest.jsonl)" in md
    assert "| QA pairs generated (data/qa.jsonl) | 60 |" in md
    assert "Split test | 40 rows" in md
    assert "smollm2-135m-instruct" in md and "max_new_tokens: 64" in md
    assert "| best\\_eval\\_loss | 1.230 |" in md and "| scrape.failed\\_by\\_reason.http\\_404 | 1 |" in md
    # examples side by side, user text inert in both renderings
    assert "| Reference | Base answer | Fine-tuned answer |" in md
    assert "<script>" not in html_text and "&lt;script&gt;" in html_text
    assert "<img src=x" not in html_text
    prose = re.sub(r"```.*?```", "", md, flags=re.S)  # inside a code fence markup is shown as text
    assert "<script>" not in prose and "\\<script\\>" in prose
    assert "Example 1 (q03): largest improvement" in md
    # plots exist and are referenced from both
    for png in ("distributions.png", "deltas.png"):
        assert (Path("metrics/report_assets") / png).stat().st_size > 5000
        assert f"report_assets/{png}" in md and f"report_assets/{png}" in html_text
    assert html_text.count("<table>") >= 5


def test_report_with_judge(workdir):
    scores = judge_scores()
    write_jsonl("data/judge/scores.jsonl", scores)
    # judge.json as the judge stage writes it; its delta keys are used as they are
    jflat = {"n": N, "judgements": len(scores), "failures": 3, "judge_calls": 400, "cache_hits": 0,
             "base.consistency.failures": 3, "delta.correctness.mean": 0.1, "delta.correctness.ci_low": 0.05,
             "delta.correctness.ci_high": 0.15,
             "probe.exact.mean": 0.939, "probe.other.mean": 0.165, "probe.vague.mean": 0.138,
             "probe.number_changed.mean": 0.287, "probe.auc": 1.0, "probe.auc_number_changed": 0.98,
             "probe.n": 30, "probe.separates": 1}
    write_json("metrics/judge.json", jflat)
    main([])
    md = Path("metrics/report.md").read_text()
    assert "judge not run" not in md
    probe = md.split("### Judge probe: does the judge's scale separate?", 1)[1].split("\n## ", 1)[0]
    assert "| exact | the reference itself | 0.939 |" in probe and "| other |" in probe
    assert "AUC exact vs all wrong answers: 1.000" in probe and "met." in probe
    assert "Table 2. Fine-tuned metrics as scored by the LLM judge" in md
    assert "Table 3. Base metrics as scored by the LLM judge" in md
    for name in JUDGE:
        assert f"{name} (judge)" in md
    # failures counted: 3 for base Consistency, 0 elsewhere
    assert "| Base | Consistency | 3 | 40 |" in md
    assert "| Fine-tuned | Correctness | 0 | 40 |" in md
    assert "+0.100 \\[+0.050, +0.150\\]" in md  # from judge.json, not recomputed
    # the rest computed from the scores: +0.1 shift on every metric -> better
    cap = "*Fine-tuned − base"
    assert _verdict_of(md, "Judge Helpfulness", cap) == "better"
    assert (Path("metrics/report_assets") / "judge.png").is_file()
    assert "Judge Correctness" in md  # in the headline list too


def test_report_requires_evaluate_outputs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text("report: {}\n")
    with pytest.raises(SystemExit, match="run the evaluate stage first"):
        main([])


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or (
    "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (apt-get install chromium)")
def test_html_renders_in_headless_chromium(workdir, tmp_path):
    from PIL import Image

    write_jsonl("data/judge/scores.jsonl", judge_scores())
    write_json("metrics/judge.json", {"n": N})
    main([])
    page = (Path("metrics/report.html")).resolve()
    profile = tmp_path / "chromium-profile"
    shot = tmp_path / "shot.png"
    common = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
              "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
              f"--user-data-dir={profile}"]
    env = {**os.environ, "HOME": str(tmp_path)}
    p = subprocess.run(common + [f"--screenshot={shot}", "--window-size=1200,2000", page.as_uri()],
                       capture_output=True, text=True, timeout=180, env=env)
    assert shot.is_file(), f"no screenshot; chromium said:\n{p.stderr[-3000:]}"
    img = Image.open(shot).convert("L")
    assert img.size == (1200, 2000)
    px = np.asarray(img)
    # not blank: plenty of non-white pixels and real contrast (text, table borders)
    assert (px < 200).mean() > 0.01 and px.std() > 20, (px.mean(), px.std())
    dom = subprocess.run(common + ["--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=180, env=env)
    assert "<table>" in dom.stdout and "Table 1: similarity metrics" in dom.stdout
    assert "Table 2. Fine-tuned metrics" in dom.stdout
    assert "<script>" not in dom.stdout  # the injected markup stayed text
    # every image loaded (naturalWidth > 0) is hard to see in a dump; check the files it points at
    for src in re.findall(r'<img src="([^"]+)"', dom.stdout):
        assert (page.parent / src).is_file(), src


def test_report_with_rag_variants(workdir):
    pe, answers = fixture_rows()
    for r in list(pe):
        pe.append({**r, "model": r["model"] + "_rag", "cosine": r["cosine"] + 0.1})
    write_jsonl("data/eval/per_example.jsonl", pe)
    models = ["base", "finetuned", "base_rag", "finetuned_rag"]
    flat = M.flat_summary(pe, models, METRICS, [c for c in COMPARISONS], n_resamples=300, seed=0)
    flat["rag.recall_at_k"] = 0.75
    write_json("metrics/eval.json", flat)
    main([])
    md = Path("metrics/report.md").read_text()
    assert "## Retrieval-augmented variants" in md and "recall@k" in md and "0.750" in md
    assert "| Metric (mean) | Base | Fine-tuned | Base + RAG | Fine-tuned + RAG |" in md
    assert _verdict_of(md, "Cosine similarity", "*Base + RAG − base") == "better"
    assert "*Fine-tuned + RAG − fine-tuned" in md and "*Fine-tuned + RAG − base + RAG" in md


def test_headline_names_the_best_variant_with_fact_recall_and_forgetting(workdir):
    """Fact recall per variant with CIs, the best variant, whether fine-tuning helped with and
    without retrieval, the judge probe's separation and the forgetting check."""
    pe, _ = fixture_rows()
    rng = np.random.default_rng(5)
    rows = []
    for r in pe:
        for variant, base_recall in ((r["model"], 0.2), (r["model"] + "_rag", 0.5)):
            lift = 0.25 if variant == "finetuned_rag" else 0.0
            fr = float(np.clip(base_recall + lift + rng.normal(0, 0.05), 0, 1))
            rows.append({**r, "model": variant, "fact_recall": fr, "all_facts": float(fr > 0.6),
                         "contradiction": 0.0, "looping": 0.0})
    write_jsonl("data/eval/per_example.jsonl", rows)
    models = ["base", "finetuned", "base_rag", "finetuned_rag"]
    flat = M.flat_summary(rows, models, METRICS, list(COMPARISONS), n_resamples=300, seed=0)
    flat.update({"rag.recall_at_k": 0.8, "coverage.questions": N, "coverage.with_gold_chunk": N,
                 "coverage.gold_chunk_in_training": 31, "general.n": 40, "general.base.accuracy.mean": 0.7,
                 "general.finetuned.accuracy.mean": 0.675, "general.delta.accuracy.mean": -0.025,
                 "general.delta.accuracy.ci_low": -0.1, "general.delta.accuracy.ci_high": 0.05,
                 **{f"{m}.looping_answers": 0 for m in models}})
    write_json("metrics/eval.json", flat)
    main([])
    md = Path("metrics/report.md").read_text()
    head = md.split("## Headline: which variant answers best", 1)[1].split("\n## ", 1)[0].replace("\\", "")
    assert "Fine-tuned + RAG (best)" in head and "Best variant by fact recall: Fine-tuned + RAG — the chatbot" in head
    assert re.search(r"with retrieval \(fine-tuned \+ RAG − base \+ RAG\): fact recall \+0\.2\d\d \[\+0\.\d+, \+0\.\d+\] "
                     r"\(better\)", head), head
    assert re.search(r"without retrieval \(fine-tuned − base\): fact recall [+-]0\.0\d\d .*no significant difference", head)
    assert "31 of them that chunk produced training pairs" in head
    forgetting = md.split("## Forgetting check: general skills", 1)[1].split("\n## ", 1)[0]
    assert "0.700" in forgetting and "0.675" in forgetting and "may have cost general ability" in forgetting
