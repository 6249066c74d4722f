"""Issue 17: judge-reply parsing is total, and the judge cache validates what it reads.

Any judge reply (any text, any JSON shape, any depth, not even a string) is a parsed score /
steps or a MalformedOutput, which the judge retries and then counts as a failed judgement; never
another exception out of judge_answers. A cache entry of the wrong shape (``[]``,
``{"failed": false}``, a score that is a string...) is counted corrupt and judged again, and a
rerun over the cache calls no model. Property tests (hypothesis) with a fast default; the
``slow`` twins run the counts reported for the issue
(``pytest -m slow tests/unit/evaluation/test_judge_hostile.py``).
"""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policytune.core.records import dumps
from policytune.evaluation import judge as J
from policytune.evaluation import judge_llm as jl
from policytune.lm.backends import Backend, Completion
from tests.helpers.judge import ScriptedBackend, answers_fixture, block_network, grading_script
from tests.unit.dataset.test_qa_hostile import hostile_replies, json_values, nested, not_text

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MANY = dict(deadline=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    yield from block_network(monkeypatch)


def cfg_for(**kw) -> J.JudgeConfig:
    from policytune.lm.backends import OpenAIConfig

    base = dict(backend="openai", openai=OpenAIConfig(concurrency=1),
                metrics={"Correctness": J.DEFAULT_METRICS["Correctness"]},
                evaluation_params={"Correctness": ["input", "actual_output", "expected_output"]}, bootstrap=50)
    base.update(kw)
    return J.JudgeConfig(**base)


# --------------------------------------------------------------------------- replies

score_replies = hostile_replies | st.builds(
    lambda v, pre, post: pre + json.dumps({"score": v, "reason": "r"}, allow_nan=True) + post,
    json_values | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
    st.sampled_from(["", "Sure: ", "```json\n"]), st.sampled_from(["", "\n```", " and more {"])) | st.sampled_from([
        '{"score": ' + "[" * 5000 + "]" * 5000 + "}", '{"score": ' + "[" * 5000, '{"score": 1' + "0" * 400 + "}",
        '{"score": "' + "9" * 5000 + '"}', '{"score": NaN}', '{"score": Infinity}', '{"score": -0.0}',
        '{"steps": ' + "[" * 5000 + "]" * 5000 + "}", '{"steps": ["a", ' + "9" * 5000 + "]}",
        '{"score": 4, "reason": "bad \\ud800 char"}', '{"score": 4, "reason": ' + "{" * 3000 + "}"])


class Other(__import__("pydantic").BaseModel):
    verdict: str
    n: int


def check_judge_reply(text) -> None:
    from deepeval.metrics.g_eval.schema import ReasonScore, Steps

    for schema in (ReasonScore, Steps, None, Other):
        try:
            out = jl.parse_output(text, schema, (1, 5))
        except jl.MalformedOutput as e:
            str(e).encode("utf-8")
            continue
        if schema is ReasonScore:
            assert 1 <= out.score <= 5 and isinstance(out.reason, str)
            out.reason.encode("utf-8")
        elif schema is Steps:
            assert out.steps and all(isinstance(s, str) and s for s in out.steps)
        elif schema is None:
            assert isinstance(out, str) and out.strip()


@FAST
@given(score_replies | not_text)
def test_judge_reply_parsing_is_total(text):
    check_judge_reply(text)


@pytest.mark.slow
@settings(max_examples=3000, **MANY)
@given(score_replies | not_text)
def test_judge_reply_parsing_is_total_many(text):
    check_judge_reply(text)


@pytest.mark.parametrize("text, why", [
    ('{"score": ' + "[" * 5000 + "]" * 5000 + "}", "nested too deeply"),   # before: RecursionError
    ('{"score": ' + "[" * 5000 + "]}", "nested too deeply"),
    ('{"score": ' + "[" * 5000, "unterminated"),
    ('{"score": 1' + "0" * 400 + "}", "outside 1..5"),                     # before: OverflowError
    ('{"score": ' + "9" * 5000 + "}", "invalid JSON"),                     # before: ValueError (4300 digits)
])
def test_deep_and_huge_scores_are_malformed_output(text, why):
    with pytest.raises(jl.MalformedOutput, match=why):
        jl.parse_reason_score(text, (1, 5))


class ReplyBackend(Backend):
    """A judge whose replies are taken in turn from a list (any type); steps prompts get valid steps."""

    name = "scripted"

    def __init__(self, replies):
        super().__init__()
        self.replies = list(replies)
        self.n = 0

    @property
    def model_id(self) -> str:
        return "scripted-judge"

    def fingerprint(self) -> str:
        return "scripted:1"

    def chat(self, batch, *, max_new_tokens, temperature=0.0, seed=0, prefill=None):
        outs = []
        for messages in batch:
            if "Test Case:" not in messages[0]["content"]:
                text = '{"steps": ["Compare the answer with the reference."]}'
            else:
                text = self.replies[self.n % len(self.replies)]
                self.n += 1
            outs.append(Completion(text=text, n_tokens=1, finish_reason="stop"))
        self._count(outs, 0.0)
        return outs


class NoJudge(ReplyBackend):
    def chat(self, *a, **k):
        raise AssertionError("the rerun called the judge")


def check_judge_run(replies) -> None:
    with tempfile.TemporaryDirectory() as d:
        be = ReplyBackend(replies)
        rows, metrics, stats = J.judge_answers(answers_fixture(), {}, cfg_for(max_retries=1), jl.TextJudge(be, max_retries=1),
                                               J.judge_cache(d))
        for r in rows:
            assert (r["score"] is None) == r["failed"] and (r["score"] is None or 0.0 <= r["score"] <= 1.0)
        assert metrics["failures"] == sum(r["failed"] for r in rows)
        "".join(dumps(r) + dumps(stats) for r in rows).encode("utf-8")
        again, m2, s2 = J.judge_answers(answers_fixture(), {}, cfg_for(max_retries=1), jl.TextJudge(NoJudge([""]), max_retries=1),
                                        J.judge_cache(d))
        assert again == rows and s2["counts"]["cache_corrupt"] == 0


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(score_replies | not_text, min_size=1, max_size=4))
def test_judge_and_its_rerun_survive_hostile_replies(replies):
    check_judge_run(replies)


@pytest.mark.slow
@settings(max_examples=300, **MANY)
@given(st.lists(score_replies | not_text, min_size=1, max_size=4))
def test_judge_and_its_rerun_survive_hostile_replies_many(replies):
    check_judge_run(replies)


def test_judge_counts_a_deeply_nested_reply_as_a_failure():
    """Before issue 17: RecursionError out of judge_answers, and again on the rerun."""
    check_judge_run(['{"score": ' + "[" * 5000 + "]" * 5000 + "}"])
    be = ReplyBackend(['{"score": ' + "[" * 5000 + "}"])
    with tempfile.TemporaryDirectory() as d:
        rows, metrics, _ = J.judge_answers(answers_fixture(), {}, cfg_for(max_retries=1), jl.TextJudge(be, max_retries=1),
                                           J.judge_cache(d))
    assert metrics["failures"] == 5 and all("nested too deeply" in r["reason"] for r in rows if r["failed"])


# --------------------------------------------------------------------------- cache entries

_TEMPLATE: dict = {}


def template_cache() -> Path:
    """A judge cache written by a real run over the answers fixture (5 judgements + 1 steps entry)."""
    if not _TEMPLATE:
        d = Path(tempfile.mkdtemp(prefix="judge-cache-"))
        J.judge_answers(answers_fixture(), {}, cfg_for(), jl.TextJudge(ScriptedBackend(grading_script)),
                        J.judge_cache(d))
        _TEMPLATE["dir"] = d
        _TEMPLATE["files"] = sorted(str(p.relative_to(d)) for p in d.rglob("*.json"))
    return _TEMPLATE["dir"]


JUDGEMENT_KEYS = sorted(J.JUDGEMENT_KEYS)


@st.composite
def judge_entries(draw):
    """(which file, how): the file's real entry with 1-3 edits, any JSON value, or raw text."""
    root = template_cache()
    rel = draw(st.sampled_from(_TEMPLATE["files"]))
    e = json.loads((root / rel).read_text(encoding="utf-8"))
    kind = draw(st.sampled_from(["edit", "edit", "edit", "any", "raw"]))
    if kind == "raw":
        return rel, "raw", draw(st.text(max_size=200) | nested())
    if kind == "any":
        return rel, "json", draw(json_values | st.sampled_from([[], {}, {"failed": False}, {"failed": True}]))
    e = copy.deepcopy(e)
    keys = ["steps"] + JUDGEMENT_KEYS if "steps" in e else JUDGEMENT_KEYS
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["drop", "set", "score", "steps"]))
        if op == "drop":
            e.pop(draw(st.sampled_from(keys)), None)
        elif op == "set":
            e[draw(st.sampled_from(keys))] = draw(json_values)
        elif op == "score":
            e["score"] = draw(st.none() | st.floats(allow_nan=True) | st.integers() | st.text(max_size=4))
        else:
            e["steps"] = draw(st.lists(json_values, max_size=3))
    return rel, "json", e


def check_judge_entry(rel, kind, value) -> None:
    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "cache"
        shutil.copytree(template_cache(), root)
        path = root / rel
        if kind == "raw":
            path.write_text(value, encoding="utf-8")
        else:
            path.write_text(json.dumps(value, allow_nan=True), encoding="utf-8")
        is_steps = Path(rel).name.startswith("steps-")
        ok = kind == "json" and isinstance(value, dict) and (J.valid_steps if is_steps else J.valid_judgement)(value)
        be = ScriptedBackend(grading_script)
        rows, metrics, stats = J.judge_answers(answers_fixture(), {}, cfg_for(), jl.TextJudge(be), J.judge_cache(root))
        assert stats["counts"]["cache_corrupt"] == (0 if ok else 1)
        if not ok:
            assert be.requests  # judged (or steps generated) again
        for r in rows:
            assert (r["score"] is None) == r["failed"] and (r["score"] is None or 0.0 <= r["score"] <= 1.0)
        "".join(dumps(r) for r in rows).encode("utf-8")
        be2 = ScriptedBackend(grading_script)
        rows2, _, s2 = J.judge_answers(answers_fixture(), {}, cfg_for(), jl.TextJudge(be2), J.judge_cache(root))
        assert s2["counts"]["cache_corrupt"] == 0 and be2.requests == [] and rows2 == rows


@FAST
@given(judge_entries())
def test_judge_cache_entries_of_any_shape_are_served_or_judged_again(entry):
    check_judge_entry(*entry)


@pytest.mark.slow
@settings(max_examples=1200, **MANY)
@given(judge_entries())
def test_judge_cache_entries_of_any_shape_are_served_or_judged_again_many(entry):
    check_judge_entry(*entry)


@pytest.mark.parametrize("value", [[], {"failed": False}, {"failed": True}, "null",
                                   {"score": "x", "failed": False, "attempts": 1, "reason": "r", "raw": None}])
def test_wrong_shape_judge_cache_entries_are_counted_and_judged_again(value, caplog):
    """Before issue 17: [] -> AttributeError, {"failed": false} -> KeyError, a string score -> ValueError."""
    template_cache()
    rel = next(f for f in _TEMPLATE["files"] if not Path(f).name.startswith("steps-"))
    check_judge_entry(rel, "raw" if isinstance(value, str) else "json", value)
    assert "malformed cache entry" in caplog.text


def test_wrong_shape_steps_entry_is_generated_again():
    template_cache()
    rel = next(f for f in _TEMPLATE["files"] if Path(f).name.startswith("steps-"))
    for bad in ({"steps": "one"}, {"steps": [1, 2]}, {"steps": []}, []):
        check_judge_entry(rel, "json", bad)
