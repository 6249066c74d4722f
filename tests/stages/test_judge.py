"""Judge stage entry point: params.yaml -> main() over a loopback OpenAI-compatible server ->
scores.jsonl, metrics/judge.json with failure counts, stats; a rerun sends no request. No
connection leaves the machine (deepeval telemetry stays off)."""

from __future__ import annotations

import pytest

from policytune.core.records import read_json, read_jsonl, write_jsonl
from policytune.evaluation.judge import DEFAULT_METRICS
from stages.judge import main
from tests.helpers.judge import answers_fixture, block_network, serve_openai

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Fail any connection that is not to loopback, and remember it (deepeval telemetry, hubs)."""
    yield from block_network(monkeypatch)


@pytest.fixture
def openai_server():
    yield from serve_openai()


def test_stage_main_over_a_loopback_openai_server(tmp_path, openai_server, monkeypatch):
    """End to end: params.yaml -> main() -> GEval -> llm.OpenAIBackend over HTTP (malformed, then
    valid JSON) -> scores.jsonl, metrics/judge.json with failure counts, stats; rerun: no requests."""
    import yaml

    port = openai_server.server_address[1]
    write_jsonl(tmp_path / "answers.jsonl", answers_fixture())
    # test rows: the source chunk of q1 (Consistency) and every question's reference (the probe)
    write_jsonl(tmp_path / "test.jsonl", [
        {"qa_id": a["qa_id"], "question": a["question"], "answer": a["reference"],
         **({"chunk_id": "c1"} if a["qa_id"] == "q1" else {})}
        for a in answers_fixture() if a["model"] == "base"])
    write_jsonl(tmp_path / "chunks.jsonl", [{"chunk_id": "c1", "text": "Hotels in Lyon: 145 EUR a night."}])
    params = {"judge": {
        "backend": "openai", "bootstrap": 200,
        "openai": {"base_url": f"http://127.0.0.1:{port}/v1", "model": "loopback-judge", "api_key_env": "",
                   "max_retries": 0, "concurrency": 1, "timeout_s": 10.0},
        "metrics": {"Correctness": DEFAULT_METRICS["Correctness"],
                    "Consistency": DEFAULT_METRICS["Consistency"]}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    args = ["--params", str(tmp_path / "params.yaml")] + [
        f"--{k}={tmp_path / v}" for k, v in [("answers", "answers.jsonl"), ("test", "test.jsonl"),
                                             ("chunks", "chunks.jsonl"), ("scores", "out/scores.jsonl"),
                                             ("cache", "out/cache"), ("metrics", "out/judge.json"),
                                             ("stats", "out/stats.json"), ("probe", "out/probe.jsonl")]]
    main(args)
    rows = read_jsonl(tmp_path / "out/scores.jsonl")
    metrics = read_json(tmp_path / "out/judge.json")
    assert len(rows) == 12 and all(set(r) >= {"qa_id", "model", "metric", "score", "raw", "reason", "failed",
                                              "attempts"} for r in rows)
    assert all((r["score"] is None) == r["failed"] for r in rows)
    assert all(r["score"] is None or 0.0 <= r["score"] <= 1.0 for r in rows)
    cons = {(r["qa_id"], r["model"]): r for r in rows if r["metric"] == "Consistency"}
    assert cons[("q1", "base")]["context_source"] == "chunk" and cons[("q2", "base")]["context_source"] == "reference"
    # the judge saw the chunk text as deepeval's "Context"
    assert any("Context:\n['<data>\\nHotels in Lyon: 145 EUR a night.\\n</data>']" in r["messages"][0]["content"]
               for r in openai_server.requests)
    assert metrics["base.correctness.failures"] == 1 and metrics["base.consistency.failures"] == 1
    assert metrics["failures"] == 2 and metrics["judgements"] == 12
    for key in ("delta.correctness.mean", "delta.correctness.ci_low", "delta.correctness.ci_high",
                "base.consistency.mean", "finetuned.consistency.mean", "n", "judge_calls", "cache_hits"):
        assert key in metrics
    # every request: temperature 0, the pinned model
    assert {(r["temperature"], r["model"]) for r in openai_server.requests} == {(0.0, "loopback-judge")}
    stats = read_json(tmp_path / "out/stats.json")
    assert stats["judge"]["model"] == "openai:loopback-judge" and stats["counts"]["failures"] == 2
    # the judge probe: 3 questions x 4 kinds, Correctness only, through the same judge and cache
    probe = read_jsonl(tmp_path / "out/probe.jsonl")
    assert len(probe) == 12 and {r["metric"] for r in probe} == {"Correctness"}
    assert {r["kind"] for r in probe} == {"exact", "other", "vague", "number_changed"}
    # the scripted judge gives 5 to any fixture reference (so "other" too) and 2 to anything else
    assert metrics["probe.exact.mean"] == 1.0 and metrics["probe.other.mean"] == 1.0
    assert metrics["probe.vague.mean"] == 0.25 and metrics["probe.number_changed.mean"] == 0.25
    assert metrics["probe.auc"] == pytest.approx((3 * 3 * 0.5 + 6 * 3 * 1.0) / 27) and metrics["probe.separates"] == 0
    assert metrics["probe.n"] == 3 and stats["probe"]["counts"]["judgements"] == 12
    n_requests = len(openai_server.requests)
    main(args)  # rerun, nothing changed: no request reaches the server
    assert len(openai_server.requests) == n_requests
    assert read_jsonl(tmp_path / "out/scores.jsonl") == rows
    assert read_jsonl(tmp_path / "out/probe.jsonl") == probe
    rerun = read_json(tmp_path / "out/judge.json")
    assert rerun["judge_calls"] == 0 and rerun["probe.judge_calls"] == 0 and rerun["probe.cache_hits"] == 12
