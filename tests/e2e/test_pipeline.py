"""End-to-end: the real `dvc repro` of the whole pipeline in a throw-away copy of the repo,
with the tiny models, then a no-op rerun and a one-page change that must rerun only what
depends on that page."""

from __future__ import annotations

import json
import shutil
import time

import pytest

from tests.helpers.repo import run, stages_run
from policytune.core.records import read_json, read_jsonl

pytestmark = pytest.mark.slow


def test_repro_builds_every_data_artifact(built):
    manifest = read_jsonl(built / "data/raw/manifest.jsonl")
    ok = [r for r in manifest if r["status"] == "ok"]
    assert len(ok) >= 12
    assert {r["status"] for r in manifest} <= {"ok", "robots_disallowed"}
    pdfs = sorted((built / "data/pdf").glob("*.pdf"))
    assert len(pdfs) == len(ok)
    chunks = read_jsonl(built / "data/chunks.jsonl")
    assert len({c["doc_id"] for c in chunks}) == len(ok)
    assert all(c["text"].strip() and c["url"] for c in chunks)
    assert not any("cookie" in c["text"].lower() and "accept" in c["text"].lower() for c in chunks)


def test_repro_builds_labelled_data(built):
    qa = read_jsonl(built / "data/qa.jsonl")
    assert len(qa) >= 30
    assert all(r["teacher"]["backend"] == "openai" and r["chunk_id"] and r["url"] for r in qa)
    split = {s: read_jsonl(built / f"data/split/{s}.jsonl") for s in ("train", "val", "test")}
    assert len(split["test"]) == 30 and all(r.get("external") for r in split["test"])
    train_chunks = {r["chunk_id"] for r in split["train"]}
    assert not train_chunks & {r["chunk_id"] for r in split["val"]}
    aug = read_jsonl(built / "data/augment/train.jsonl")
    ops = {r["augmentation"]["op"] for r in aug if r.get("augmentation")}
    assert ops == {"synonym", "back_translation", "char_delete", "char_swap"}, ops
    assert all(r["messages"][-1]["role"] == "assistant" for r in aug)
    data = read_json(built / "metrics/data.json")
    assert data["generate_qa"]["accepted"] == len(qa)
    assert data["augment"]["rows_out"] == len(aug)
    shown = run(["dvc", "metrics", "show"], built).stdout
    assert "metrics/data.json" in shown and "generate_qa.accepted" in shown


def test_raft_rows_carry_retrieved_excerpts_and_no_test_question(built):
    train = read_jsonl(built / "data/raft/train.jsonl")
    raft = [r for r in train if r.get("raft")]
    assert raft and len(train) > len(raft)  # closed-book rows kept beside the RAFT rows
    assert all("<excerpt" in r["messages"][1]["content"] for r in raft)
    share = sum(r["raft"]["oracle"] for r in raft) / len(raft)
    assert 0.5 <= share <= 1.0  # oracle_share 0.8
    test_q = {r["question"].strip().lower() for r in read_jsonl(built / "data/split/test.jsonl")}
    asked = {r["messages"][1]["content"].rsplit("Question: ", 1)[-1].strip().lower() for r in train}
    assert not asked & test_q, "a test question reached the training rows"
    stats = read_json(built / "data/stats/raft.json")
    assert stats["train"]["raft_rows"] == len(raft)


def test_noop_repro_does_nothing(built):
    status = run(["dvc", "status"], built)
    assert "up to date" in status.stdout, status.stdout
    t0 = time.monotonic()
    p = run(["dvc", "repro"], built)
    assert stages_run(p.stdout) == [], p.stdout
    assert time.monotonic() - t0 < 60


def test_changing_one_page_reruns_only_its_outputs(built, tmp_path):
    repo = tmp_path / "changed"
    shutil.copytree(built, repo, symlinks=True)
    pdf_dir = repo / "data/pdf"
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in pdf_dir.glob("*.pdf")}
    chunks_before = read_jsonl(repo / "data/chunks.jsonl")

    page = repo / "data/sample_site/hr/leave.html"
    html = page.read_text(encoding="utf-8")
    marker = "Employees may carry over at most 7 unused leave days into the first quarter."
    page.write_text(html.replace("</h1>", f"</h1>\n<p>{marker}</p>", 1), encoding="utf-8")

    p = run(["dvc", "repro"], repo, timeout=1800)
    ran = stages_run(p.stdout)
    assert not any(s.startswith("prepare_models") for s in ran), ran
    assert {"scrape", "render", "extract"} <= set(ran), ran

    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in pdf_dir.glob("*.pdf")}
    changed = [n for n in after if before.get(n) != after[n]]
    assert len(changed) == 1, f"only the edited page's PDF may change, got {changed}"
    chunks_after = read_jsonl(repo / "data/chunks.jsonl")
    changed_doc = {c["doc_id"] for c in chunks_after if marker in c["text"]}
    assert len(changed_doc) == 1
    keep = lambda rows: sorted(c["chunk_id"] for c in rows if c["doc_id"] not in changed_doc)  # noqa: E731
    assert keep(chunks_before) == keep(chunks_after), "chunks of untouched pages must not change"


def test_repro_trains_evaluates_judges_and_reports(built):
    train = read_json(built / "metrics/train.json")
    assert train["best_eval_loss"] <= train["base_eval_loss"] + 1e-6
    assert (built / "models/adapter/adapter_config.json").exists()
    ev = read_json(built / "metrics/eval.json")
    flat = json.dumps(ev)
    for key in ("bertscore_f1", "cosine", "relevance", "ref_ppl"):
        assert f'"{key}"' in flat or f"{key}." in flat, key
    answers = read_jsonl(built / "data/eval/answers.jsonl")
    assert {a["model"] for a in answers} == {"base", "finetuned", "base_rag", "finetuned_rag"}
    for v in ("base", "finetuned", "base_rag", "finetuned_rag"):  # fact-level metrics of every variant, with CIs
        for stat in ("mean", "ci_low", "ci_high"):
            assert f"{v}.fact_recall.{stat}" in ev and f"{v}.all_facts.{stat}" in ev
        assert isinstance(ev[f"{v}.looping_answers"], int)
    assert ev["delta_rag.fact_recall.mean"] is not None and ev["delta.fact_recall.ci_low"] is not None
    assert 0 <= ev["rag.recall_at_k"] <= 1 and ev["coverage.with_gold_chunk"] >= 1
    general = read_jsonl(built / "data/eval/general.jsonl")  # the forgetting check
    assert {a["model"] for a in general} == {"general_base", "general_finetuned"} and len(general) == 80
    assert ev["general.delta.accuracy.ci_low"] is not None
    judge = read_json(built / "metrics/judge.json")
    assert "failures" in json.dumps(judge)
    report = (built / "metrics/report.md").read_text()
    assert "fine-tuned" in report.lower() and "25%" in report
    assert "Headline: which variant answers best" in report and "Best variant by fact recall" in report
    assert "Forgetting check" in report
    shown = run(["dvc", "metrics", "show"], built).stdout
    assert "metrics/eval.json" in shown and "metrics/judge.json" in shown
