"""The judge probe (policytune.evaluation.judge_probe): its items (four kinds, a derangement that
never gives a question its own reference, exactly one number changed, counted skips), the AUC,
the probe.* keys, per-metric anchored rubrics, and the probe judged through the stage's own
machinery — a scripted judge that separates, and the local judge on the tiny model (mechanics
only: valid scores, keys present, a rerun served from the cache)."""

from __future__ import annotations

import json

import pytest

from policytune.core.params import ParamsError
from policytune.evaluation import judge as J
from policytune.evaluation import judge_llm as jl
from policytune.evaluation import judge_probe as P
from policytune.lm.backends import OpenAIConfig
from tests.helpers.judge import ScriptedBackend, block_network, is_steps_prompt

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

STEPS = ["Compare the facts of the actual output with the expected output."]


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    yield from block_network(monkeypatch)


def probe_rows() -> list[dict]:
    return [
        {"qa_id": "q1", "question": "How much can a hotel in Lyon cost?", "answer": "145 EUR a night, taxes included."},
        {"qa_id": "q2", "question": "Who approves contracts?", "answer": "Contracts between 25,000 and 140,000 EUR "
                                                                        "need the Finance Controller."},
        {"qa_id": "q3", "question": "Who signs form FIN-03?", "answer": "Your line manager signs it."},
        {"qa_id": "q4", "question": "When are claims due?", "answer": "On form FIN-03 within 30 days."},
        {"qa_id": "q5", "question": "Same answer as q4?", "answer": "On form FIN-03 within 30 days."},
    ]


def cfg_for(**kw) -> J.JudgeConfig:
    base = dict(backend="openai", openai=OpenAIConfig(concurrency=1), bootstrap=200,
                metrics={k: J.DEFAULT_METRICS[k] for k in ("Correctness", "Relevance")},
                evaluation_params={"Correctness": ["input", "actual_output", "expected_output"],
                                   "Relevance": ["input", "actual_output"]},
                evaluation_steps={"Correctness": STEPS, "Relevance": ["Check the answer addresses the question."]})
    base.update(kw)
    return J.JudgeConfig(**base)


def numbers(text: str) -> list[str]:
    return P.NUMBER_RE.findall(text)


# --------------------------------------------------------------------------- items


def test_probe_items_four_kinds_derangement_one_number_changed_skips_counted():
    rows = probe_rows()
    items, skipped = P.build_probe(rows)
    by = {(i["qa_id"], i["kind"]): i for i in items}
    ref = {r["qa_id"]: r["answer"] for r in rows}
    # q3's reference has no number: no number_changed item for it, counted
    assert skipped == {"exact": 0, "other": 0, "vague": 0, "number_changed": 1}
    assert len(items) == 5 * 4 - 1 and ("q3", "number_changed") not in by
    assert {i["model"] for i in items} == {f"probe_{k}" for k in P.KINDS}
    for qa, r in ref.items():
        assert by[(qa, "exact")]["answer"] == r and by[(qa, "vague")]["answer"] == P.VAGUE_ANSWER
        assert all(i["reference"] == r for i in items if i["qa_id"] == qa)
        other = by[(qa, "other")]
        # another question's reference, never its own, never the same text (q4 and q5 share one)
        assert other["from_qa_id"] != qa and other["answer"] == ref[other["from_qa_id"]] and other["answer"] != r
        if (qa, "number_changed") in by:
            changed = by[(qa, "number_changed")]["answer"]
            a, b = numbers(r), numbers(changed)
            assert len(a) == len(b) and sum(x != y for x, y in zip(a, b)) == 1
            assert P.NUMBER_RE.sub("#", r) == P.NUMBER_RE.sub("#", changed)  # nothing else changed
    # deterministic, and the limit keeps the first questions
    assert P.build_probe(rows) == (items, skipped)
    few, _ = P.build_probe(rows, limit=2)
    assert {i["qa_id"] for i in few} == {"q1", "q2"} and {i["from_qa_id"] for i in few if i["kind"] == "other"} <= {"q1", "q2"}


@pytest.mark.parametrize("text, changed", [
    ("145 EUR a night.", "290 EUR a night."),
    ("Between 25,000 and 140,000 EUR.", "Between 50,000 and 140,000 EUR."),
    ("Form FIN-03 within 30 days.", "Form FIN-03 within 60 days."),   # a form code is not a quantity
    ("Form FIN-03, tier-3.", "Form FIN-06, tier-3."),  # only codes: the first one, zero-padded
    ("0 days.", "1 days."),
    ("Ask your manager.", None),
])
def test_change_one_number(text, changed):
    assert P.change_one_number(text) == changed


def test_derangement_never_maps_a_question_to_itself():
    for n in range(2, 12):
        refs = [f"answer {i}" for i in range(n)]
        js = [P.other_index(refs, i) for i in range(n)]
        assert all(j is not None and j != i for i, j in enumerate(js))
    assert P.other_index(["same", "same"], 0) is None and P.other_index(["only"], 0) is None
    items, skipped = P.build_probe([{"qa_id": "a", "question": "q?", "answer": "No number."}])
    assert skipped["other"] == 1 and skipped["number_changed"] == 1 and len(items) == 2


def test_probe_needs_question_and_reference():
    with pytest.raises(J.JudgeStageError, match="probe.enabled: false"):
        P.build_probe([{"qa_id": "q1", "chunk_id": "c1"}])


# --------------------------------------------------------------------------- AUC and summary


def test_auc_known_inputs():
    assert P.auc([0.9, 0.8, 1.0], [0.1, 0.2]) == 1.0
    assert P.auc([0.1, 0.2], [0.9, 0.8, 1.0]) == 0.0
    assert P.auc([0.5, 0.5], [0.5]) == 0.5
    assert P.auc([0.5, 0.9], [0.5, 0.1]) == pytest.approx((0.5 + 1 + 1 + 1) / 4)
    assert P.auc([], [0.1]) is None and P.auc([0.1], []) is None


def _rows(scores: dict[str, list[float]]) -> list[dict]:
    return [{"qa_id": f"q{i}", "kind": k, "score": s, "failed": s is None}
            for k, ss in scores.items() for i, s in enumerate(ss)]


def test_summary_keys_and_separates():
    good = P.summarise_probe(_rows({"exact": [0.9, 1.0], "other": [0.0, 0.1], "vague": [0.1, 0.2],
                                    "number_changed": [0.5, None]}), {"number_changed": 1})
    assert good["probe.separates"] == 1 and good["probe.auc"] == 1.0 and good["probe.n"] == 2
    assert good["probe.exact.mean"] == pytest.approx(0.95) and good["probe.number_changed.n"] == 1
    assert good["probe.number_changed.failures"] == 1 and good["probe.number_changed.skipped"] == 1
    assert {f"probe.auc_{k}" for k in P.NEGATIVE_KINDS} <= set(good)
    flat = P.summarise_probe(_rows({"exact": [0.77, 0.8], "other": [0.4, 0.5], "vague": [0.4, 0.4],
                                    "number_changed": [0.7, 0.8]}), {})
    assert flat["probe.separates"] == 0 and flat["probe.auc"] < 0.95
    json.dumps(good)


# --------------------------------------------------------------------------- per-metric rubric


def test_metric_rubric_overrides_the_shared_one_for_that_metric_only():
    anchored = {1: "Different facts or no answer.", 2: "A number differs.", 3: "A key fact missing.",
                4: "Minor detail missing.", 5: "Every number, deadline, role and form matches."}
    cfg = cfg_for(rubrics={"Correctness": anchored})
    specs = {s["name"]: s for s in J.metric_specs(cfg)}
    assert specs["Correctness"]["rubric"] == sorted(anchored.items())
    assert specs["Relevance"]["rubric"] == sorted(J.DEFAULT_RUBRIC.items())
    judge = jl.TextJudge(ScriptedBackend(lambda m: ""))
    from deepeval.test_case import LLMTestCase
    tc = LLMTestCase(input="q", actual_output="a", expected_output="r")
    prompt = J._make_geval(specs["Correctness"], cfg, judge, STEPS)._results_prompt(tc, False, None)
    assert "5: Every number, deadline, role and form matches." in prompt and J.DEFAULT_RUBRIC[5] not in prompt
    with pytest.raises(ParamsError, match="differ from judge.rubric"):
        J.metric_specs(cfg_for(rubrics={"Correctness": {1: "bad", 2: "good"}}))
    with pytest.raises(ParamsError, match="unknown metric"):
        J.metric_specs(cfg_for(rubrics={"Brevity": anchored}))


def test_probe_config_checks():
    with pytest.raises(ParamsError, match="probe.metric"):
        P.probe_config(cfg_for(probe=J.ProbeConfig(metric="Brevity")))
    with pytest.raises(ParamsError, match="expected_output"):
        P.probe_config(cfg_for(probe=J.ProbeConfig(metric="Relevance")))
    p = P.probe_config(cfg_for(limit=3, models=["base"]))
    assert list(p.metrics) == ["Correctness"] and p.limit == 0 and p.models == []


# --------------------------------------------------------------------------- judged


def exact_script(messages) -> str:
    """5 when the actual output is the expected output, 1 otherwise."""
    p = messages[0]["content"]
    if is_steps_prompt(messages):
        return '{"steps": ["x"]}'
    actual = p.split("Actual Output:")[1].split("Expected Output:")[0].strip()
    expected = p.split("Expected Output:")[1].split("Following the evaluation steps")[0].strip()
    return json.dumps({"score": 5 if actual == expected else 1, "reason": "scripted"})


def test_probe_through_the_judge_machinery_and_its_cache(tmp_path):
    cache = J.judge_cache(tmp_path / "cache")
    be = ScriptedBackend(exact_script)
    rows, m, stats = P.run_probe(probe_rows(), cfg_for(), jl.TextJudge(be), cache)
    assert len(rows) == 19 and {r["metric"] for r in rows} == {"Correctness"}  # the probe metric only
    assert all(r["score"] == (1.0 if r["kind"] == "exact" else 0.0) for r in rows)
    assert m["probe.separates"] == 1 and m["probe.auc"] == 1.0 and m["probe.auc_number_changed"] == 1.0
    assert m["probe.judgements"] == 19 and m["probe.judge_calls"] == len(be.requests) == 19
    assert stats["skipped"]["number_changed"] == 1 and stats["metric"] == "Correctness"
    # a real answer identical to a probe item is the same judgement: one cache entry serves both
    real = [{"qa_id": "q1", "model": "finetuned", "question": probe_rows()[0]["question"],
             "reference": probe_rows()[0]["answer"], "answer": probe_rows()[0]["answer"], "gen": {}}]
    _, mr, _ = J.judge_answers(real, {}, P.probe_config(cfg_for()), jl.TextJudge(ScriptedBackend(exact_script)), cache)
    assert mr["cache_hits"] == 1 and mr["judge_calls"] == 0
    again = ScriptedBackend(exact_script)
    rows2, m2, _ = P.run_probe(probe_rows(), cfg_for(), jl.TextJudge(again), cache)
    assert again.requests == [] and rows2 == rows and m2["probe.cache_hits"] == 19


def test_probe_on_the_tiny_local_judge(tiny_model_dir, tmp_path):
    """Mechanics only (random weights): every probe item gets a valid score from the score-token
    probabilities, the probe.* keys are there, a rerun is served from the cache."""
    cfg = J.JudgeConfig(backend="local", model_dir=str(tiny_model_dir), bootstrap=200,
                        evaluation_steps={"Correctness": STEPS}, metrics={"Correctness": J.DEFAULT_METRICS["Correctness"]},
                        evaluation_params={"Correctness": ["input", "actual_output", "expected_output"]},
                        probe=J.ProbeConfig(limit=3))
    judge = J.build_judge(cfg)
    cache = J.judge_cache(tmp_path / "cache")
    rows, m, _ = P.run_probe(probe_rows(), cfg, judge, cache)
    assert len(rows) == 3 * 4 - 1  # q3 has no number
    assert all(not r["failed"] and 0.0 <= r["score"] <= 1.0 and r["raw"]["probs"] for r in rows)
    for k in ("probe.exact.mean", "probe.other.mean", "probe.vague.mean", "probe.number_changed.mean", "probe.auc",
              "probe.auc_number_changed", "probe.n", "probe.separates"):
        assert k in m
    assert m["probe.n"] == 3 and m["probe.separates"] in (0, 1) and 0.0 <= m["probe.auc"] <= 1.0
    assert m["probe.judge_calls"] == 11 and judge.stats["prefix_hits"] == 11
    rows2, m2, _ = P.run_probe(probe_rows(), cfg, J.build_judge(cfg), cache)
    assert rows2 == rows and m2["probe.cache_hits"] == 11 and m2["probe.judge_calls"] == 0
    assert [json.dumps(r) for r in rows2] == [json.dumps(r) for r in rows]  # same bytes: DVC sees no change


def test_score_temperature_sharpens_one_metric_and_keys_only_its_judgements(tiny_model_dir, tmp_path):
    """judge.score_temperature.Correctness = 0.5: its score-token distribution is p**2 renormalised
    (the judge's own kept as model_probs), the most likely score unchanged, GEval's score the
    weighted sum of it; its judgements are new cache entries, the other metric's are reused."""
    import dataclasses
    import math

    from tests.helpers.judge import answers_fixture

    metrics = {k: J.DEFAULT_METRICS[k] for k in ("Correctness", "Relevance")}
    cfg = J.JudgeConfig(backend="local", model_dir=str(tiny_model_dir), bootstrap=200, metrics=metrics,
                        evaluation_params={"Correctness": ["input", "actual_output", "expected_output"],
                                           "Relevance": ["input", "actual_output"]},
                        evaluation_steps={k: STEPS for k in metrics})
    judge = J.build_judge(cfg)
    assert judge.calibrated(1.0) is judge
    with pytest.raises(ValueError):
        judge.calibrated(0.0)
    cache = J.judge_cache(tmp_path / "cache")
    rows1, _, _ = J.judge_answers(answers_fixture(), {}, cfg, judge, cache)
    hot = dataclasses.replace(cfg, score_temperature={"Correctness": 0.5})
    rows2, m2, _ = J.judge_answers(answers_fixture(), {}, hot, judge, cache)
    assert m2["cache_hits"] == 5 and m2["judge_calls"] == 5  # Relevance reused, Correctness judged again
    before = {(r["qa_id"], r["model"], r["metric"]): r for r in rows1}
    for r in rows2:
        old = before[(r["qa_id"], r["model"], r["metric"])]
        if r["metric"] == "Relevance" or r["raw"] is None:
            assert r == old
            continue
        p = old["raw"]["probs"]
        sharp = [x * x / sum(y * y for y in p) for x in p]
        assert r["raw"]["temperature"] == 0.5 and r["raw"]["model_probs"] == pytest.approx(p, abs=1e-5)
        assert r["raw"]["probs"] == pytest.approx(sharp, abs=1e-5)
        assert max(range(5), key=lambda i: sharp[i]) == max(range(5), key=lambda i: p[i])
        expected = jl.expected_score([math.log(x) for x in r["raw"]["probs"]], [1, 2, 3, 4, 5], min_prob=0.01)
        assert r["score"] == pytest.approx(jl.normalise(expected, (1, 5)), abs=1e-4)
    with pytest.raises(ParamsError, match="unknown metric"):
        J.metric_specs(dataclasses.replace(cfg, score_temperature={"Brevity": 0.5}))
