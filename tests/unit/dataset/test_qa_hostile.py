"""Issue 17: teacher-reply parsing is total, and the teacher-reply cache validates what it reads.

Any reply (any text, any JSON shape, any depth, not even a string) gives a parsed result or a
counted rejection reason, never an exception; a rerun over the same cached replies neither
crashes nor calls the teacher; a cache entry of the wrong shape is counted corrupt and asked
again. Property tests (hypothesis) with a fast default; the ``slow`` twins run the counts
reported for the issue (``pytest -m slow tests/unit/dataset/test_qa_hostile.py``).
"""

from __future__ import annotations

import copy
import json
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policytune.core.records import dumps, sha256_text
from policytune.dataset.qa import (MAX_JSON_DEPTH, OUTPUT_ERRORS, GenerateQAConfig, evaluate_attempt, json_depth,
                                   parse_output)
from policytune.dataset.qa_generate import cache_key_parts, generate, qa_cache, valid_entry
from policytune.lm.backends import Backend, Completion
from tests.unit.dataset.test_qa import GOOD, LEAVE, ScriptedBackend, cfg, chunk, fake_embed

PAIR_REASONS = {"schema", "prompt_injection_echo", "not_a_question", "vague_question", "answer_in_question",
                "too_short", "too_long", "copies_chunk", "extra_pair", "truncated"}
STAGE_REASONS = {"not_grounded", "duplicate_exact", "duplicate_near", "chunk_too_short"}
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------- hostile replies

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | \
    st.text(max_size=30)
json_values = st.recursive(json_scalars, lambda ch: st.lists(ch, max_size=4) |
                           st.dictionaries(st.sampled_from(["question", "answer", "q", "score", "pairs"]) |
                                           st.text(max_size=6), ch, max_size=4), max_leaves=20)
pair_like = st.fixed_dictionaries({"question": json_values | st.text(max_size=80), "answer": json_values | st.text()})


@st.composite
def nested(draw) -> str:
    """Deep nesting: "[" x 5000, '{"a": [[[...', lists of pairs inside deep lists; closed or not."""
    depth = draw(st.integers(0, 6000) | st.integers(MAX_JSON_DEPTH - 2, MAX_JSON_DEPTH + 2))
    opener, closer = draw(st.sampled_from([("[", "]"), ('{"a": ', "}"), ('[{"question": ', "}]"),
                                           ('{"score": [', "]}"), ("[[", "]]"), ('[{"x":', "}]")]))
    inner = draw(st.sampled_from(["", "1", json.dumps([{"question": "How long is parental leave?",
                                                         "answer": "Sixteen weeks."}]), '"x"']))
    close = draw(st.sampled_from([0, depth, depth // 2]))
    return draw(st.sampled_from(["", "Here:\n", "```json\n", '[{"question": "Who approves leave requests here?", '
                                                                '"answer": "The HR team."}, '])) + \
        opener * depth + inner + closer * close


@st.composite
def mangled_json(draw) -> str:
    """A JSON value (often the contract's shape) cut off, wrapped in prose or fences, or spliced."""
    value = draw(st.lists(pair_like, max_size=4) | json_values)
    text = json.dumps(value, ensure_ascii=draw(st.booleans()), allow_nan=True)
    how = draw(st.sampled_from(["as_is", "cut", "prose", "fence", "fence_open", "splice", "twice"]))
    if how == "cut":
        text = text[:draw(st.integers(0, len(text)))]
    elif how == "prose":
        text = draw(st.text(max_size=40)) + text + draw(st.text(max_size=40))
    elif how == "fence":
        text = "```json\n" + text + "\n```" + draw(st.text(max_size=20))
    elif how == "fence_open":
        text = "```\n" + text[:draw(st.integers(0, len(text)))]
    elif how == "splice":
        i = draw(st.integers(0, len(text)))
        text = text[:i] + draw(st.text(alphabet='[]{},:"\\ 0123456789eE.-', max_size=20)) + text[i:]
    elif how == "twice":
        text = text + "\n" + text
    return text


hostile_replies = (st.text() | st.text(alphabet='[]{}",:\\ \n\tnulltrue0123456789.eE-', max_size=300) |
                   nested() | mangled_json() |
                   st.sampled_from(['[{"question": "How long is leave?", "answer": ' + "9" * 5000 + "}]",
                                    '[{"question": "How long is leave \\ud800 here?", "answer": "Sixteen weeks."}]',
                                    '[{"question": "How long is parental leave here?", "answer": "16 weeks"}] \ud800',
                                    "[" * 200_001, "", " ", "```", "``````", "[]", "{}", "[{}]", "NaN", "[NaN]"]))
finish_reasons = st.sampled_from(["stop", "length", "", None, 7])
not_text = st.none() | st.integers() | st.lists(st.text(), max_size=3) | st.dictionaries(st.text(), st.text())


def check_reply(text, finish) -> None:
    p = parse_output(text, finish)
    assert isinstance(p.items, list) and isinstance(p.truncated, bool)
    assert p.error is None or (p.error in OUTPUT_ERRORS and p.items == [])
    assert json_depth(p.items) <= MAX_JSON_DEPTH + 1
    pairs, rejects = evaluate_attempt(text, finish, LEAVE, GenerateQAConfig())
    for q in pairs:
        assert set(q) == {"question", "answer"} and all(isinstance(v, str) and v for v in q.values())
    for r in rejects:
        assert r["reason"] in OUTPUT_ERRORS or r["reason"] in PAIR_REASONS, r["reason"]
    # every record is writable as the stage writes it (UTF-8 JSON lines)
    "".join(dumps(r) for r in pairs + rejects).encode("utf-8")


@FAST
@given(hostile_replies, finish_reasons)
def test_teacher_reply_parsing_is_total(text, finish):
    check_reply(text, finish)


@pytest.mark.slow
@settings(max_examples=4000, deadline=None, suppress_health_check=list(HealthCheck))
@given(hostile_replies, finish_reasons)
def test_teacher_reply_parsing_is_total_many(text, finish):
    check_reply(text, finish)


@FAST
@given(not_text)
def test_a_reply_that_is_not_text_is_a_counted_rejection(value):
    assert parse_output(value).error == "not_text"
    pairs, rejects = evaluate_attempt(value, "stop", LEAVE, GenerateQAConfig())
    assert pairs == [] and [r["reason"] for r in rejects] == ["not_text"]


@pytest.mark.parametrize("text, error", [
    ("[" * 5000, "too_deep"),
    ('{"score": ' + "[" * 5000, "too_deep"),
    ('{"a": ' * 3000 + "1" + "}" * 3000, "too_deep"),
    ('[{"question": "How long is parental leave?", "answer": ' + "[" * 5000 + "]" * 5000 + "}]", "too_deep"),
    ("x" * 200_001, "oversized_output"),
])
def test_deep_and_oversized_replies_are_counted(text, error):
    """Before issue 17: RecursionError out of parse_output (and so out of generate_qa)."""
    assert parse_output(text).error == error
    assert [r["reason"] for r in evaluate_attempt(text, "stop", LEAVE, GenerateQAConfig())[1]] == [error]


def test_depth_limit_is_exact_and_the_contract_fits():
    d = MAX_JSON_DEPTH
    p = parse_output("[" * d + "]" * d)
    assert p.error is None and json_depth(p.items) == d  # parsed (then schema-rejected element by element)
    p = parse_output("[" * (d + 1) + "]" * (d + 1))
    assert p.error is None and json_depth(p.items) == d  # the outermost list is refused, the next one found
    good = json.dumps([{"question": "How long is parental leave?", "answer": "Sixteen weeks."}])
    p = parse_output("[" * 200 + " junk " + good)
    assert p.error is None and p.items[0]["answer"] == "Sixteen weeks."


def test_huge_integer_and_surrogate_pairs_are_rejected_not_crashing():
    """Before: ValueError (int of > 4300 digits); UnicodeEncodeError writing the pair or its id."""
    c = GenerateQAConfig()
    pairs, rej = evaluate_attempt('[{"question": "How long is leave?", "answer": ' + "9" * 5000 + "}]", "stop", LEAVE, c)
    assert pairs == [] and rej[0]["reason"] == "malformed_json"
    pairs, rej = evaluate_attempt('[{"question": "How long is parental leave \\ud800?", "answer": "Sixteen weeks."}]',
                                  "stop", LEAVE, c)
    assert pairs == [] and rej[0]["reason"] == "schema" and "surrogate" in rej[0]["detail"]
    rej[0]["raw"].encode("utf-8")


def test_parsing_time_is_bounded():
    """The caps keep the worst replies cheap (the unbounded parser was cubic on some of them)."""
    worst = ["[" * 199_999, '[{"q": ' * 28_000, "```[\n" * 39_000, '{"a":{"a":' * 19_000 + " [1] " * 1000,
             '{"a":' + "[1]," * 49_000]
    for text in worst:
        t0 = time.perf_counter()
        parse_output(text)
        assert time.perf_counter() - t0 < 5.0, text[:20]


# --------------------------------------------------------------------------- through generate_qa, and the rerun


class ReplyBackend(Backend):
    """A teacher that answers every prompt with the given replies in turn (any type)."""

    name = "scripted"

    def __init__(self, replies):
        super().__init__()
        self.replies = list(replies)
        self.prompts = 0

    @property
    def model_id(self) -> str:
        return "scripted-teacher"

    def fingerprint(self) -> str:
        return "scripted:v1"

    def chat(self, batch, *, max_new_tokens, temperature=0.0, seed=0, prefill=None, on_result=None):
        outs = []
        for i, _ in enumerate(batch):
            text = self.replies[self.prompts % len(self.replies)]
            self.prompts += 1
            outs.append(Completion(text=text, n_tokens=3, finish_reason="length" if self.prompts % 2 else "stop",
                                   seconds=0.0))
            if on_result is not None:
                on_result(i, outs[-1])
        self._count(outs, 0.0)
        return outs


class NoTeacher(ReplyBackend):
    def chat(self, *a, **k):
        raise AssertionError("the rerun asked the teacher")


def check_generate(replies) -> None:
    chunks = [chunk("l1", LEAVE), chunk("l2", "Second copy. " + LEAVE)]
    with tempfile.TemporaryDirectory() as d:
        res = generate(chunks, cfg(max_retries=1), ReplyBackend(replies), qa_cache(d), embed=fake_embed)
        for r in res.rejected:
            assert r["reason"] in set(OUTPUT_ERRORS) | PAIR_REASONS | STAGE_REASONS
        "".join(dumps(r) for r in res.qa + res.rejected).encode("utf-8")
        again = generate(chunks, cfg(max_retries=1), NoTeacher([""]), qa_cache(d), embed=fake_embed)
        assert again.qa == res.qa and again.stats["cache_corrupt"] == 0 and again.stats["cache_hits"] == 2


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(hostile_replies, min_size=1, max_size=4))
def test_generate_qa_and_its_rerun_survive_hostile_replies(replies):
    check_generate(replies)


@pytest.mark.slow
@settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(hostile_replies, min_size=1, max_size=4))
def test_generate_qa_and_its_rerun_survive_hostile_replies_many(replies):
    check_generate(replies)


def test_generate_with_a_reply_that_is_not_text():
    check_generate([None, 42, ["a"], GOOD["Employees"]])


# --------------------------------------------------------------------------- cache entries


def _key_and_entry(tmp: str) -> tuple[str, dict, Path]:
    """A real entry written by generate for one chunk (the shape a hostile edit starts from)."""
    ch = chunk("l1", LEAVE)
    be = ScriptedBackend()
    generate([ch], cfg(), be, qa_cache(tmp), embed=fake_embed)
    key = sha256_text(json.dumps(cache_key_parts(ch, cfg(), be), sort_keys=True))
    path = qa_cache(tmp).path(key)
    return key, json.loads(path.read_text(encoding="utf-8")), path


_BASE: dict = {}


def base_entry() -> tuple[str, dict]:
    if not _BASE:
        with tempfile.TemporaryDirectory() as d:
            key, entry, _ = _key_and_entry(d)
        _BASE.update(key=key, entry=entry)
    return _BASE["key"], copy.deepcopy(_BASE["entry"])


ENTRY_KEYS = ["key", "key_parts", "chunk_id", "attempts", "pairs", "status"]
ATTEMPT_KEYS = ["attempt", "temperature", "seed", "text", "n_tokens", "finish_reason", "seconds"]


@st.composite
def hostile_entries(draw):
    """Either raw file text, or a JSON value: the real entry with 1-3 edits, or anything at all."""
    key, e = base_entry()
    kind = draw(st.sampled_from(["edit", "edit", "edit", "any", "raw"]))
    if kind == "raw":
        return "raw", draw(st.text(max_size=200) | nested() | mangled_json())
    if kind == "any":
        return "json", draw(json_values)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["drop", "set", "att_set", "att_drop", "att_text", "atts"]))
        atts = e.get("attempts") if isinstance(e.get("attempts"), list) else None
        if op == "drop":
            e.pop(draw(st.sampled_from(ENTRY_KEYS)), None)
        elif op == "set":
            e[draw(st.sampled_from(ENTRY_KEYS))] = draw(json_values)
        elif op == "atts":
            e["attempts"] = draw(st.lists(json_values, max_size=3))
        elif atts and isinstance(atts[0], dict):
            if op == "att_set":
                atts[0][draw(st.sampled_from(ATTEMPT_KEYS))] = draw(json_values)
            elif op == "att_drop":
                atts[0].pop(draw(st.sampled_from(ATTEMPT_KEYS)), None)
            else:  # a cached reply that is itself hostile: the rerun re-parses it
                atts[0]["text"] = draw(hostile_replies)
    return "json", e


def check_entry(kind, value) -> None:
    key, _ = base_entry()
    ch = chunk("l1", LEAVE)
    with tempfile.TemporaryDirectory() as d:
        path = qa_cache(d).path(key)
        path.parent.mkdir(parents=True)
        if kind == "raw":
            path.write_text(value, encoding="utf-8", errors="surrogatepass")
        else:
            path.write_text(json.dumps(value, ensure_ascii=True, allow_nan=True), encoding="utf-8")
        served = kind == "json" and isinstance(value, dict) and value.get("key") == key and valid_entry(value)
        be = ScriptedBackend()
        res = generate([ch], cfg(), be, qa_cache(d), embed=fake_embed)
        assert res.stats["cache_corrupt"] == (0 if served else 1)
        if not served:
            assert be.stats["prompts"] == 1 and len(res.qa) == 2  # regenerated
        "".join(dumps(r) for r in res.qa + res.rejected).encode("utf-8")
        # what is on disk now is a valid entry: the next run reads it without a miss or a call
        again = generate([ch], cfg(), NoTeacher([""]), qa_cache(d), embed=fake_embed)
        assert again.stats["cache_corrupt"] == 0 and again.qa == res.qa


@FAST
@given(hostile_entries())
def test_qa_cache_entries_of_any_shape_are_served_or_regenerated(entry):
    check_entry(*entry)


@pytest.mark.slow
@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
@given(hostile_entries())
def test_qa_cache_entries_of_any_shape_are_served_or_regenerated_many(entry):
    check_entry(*entry)


@pytest.mark.parametrize("mutate", [
    lambda k, e: {"key": k},                                                   # before: KeyError 'key_parts'
    lambda k, e: {**e, "attempts": [{}]},                                      # before: KeyError 'text'
    lambda k, e: {**e, "attempts": "x"},                                       # before: TypeError
    lambda k, e: {**e, "key_parts": {**e["key_parts"], "model": "other"}},     # parts do not hash to the key
    lambda k, e: {**e, "attempts": [{**e["attempts"][0], "n_tokens": "many"}]},
    lambda k, e: {**e, "attempts": [{**e["attempts"][0], "text": None}]},
])
def test_wrong_shape_qa_cache_entry_is_counted_and_regenerated(tmp_path, mutate):
    key, e, path = _key_and_entry(str(tmp_path))
    path.write_text(json.dumps(mutate(key, e)), encoding="utf-8")
    be = ScriptedBackend()
    res = generate([chunk("l1", LEAVE)], cfg(), be, qa_cache(tmp_path), embed=fake_embed)
    assert res.stats["cache_corrupt"] == 1 and be.stats["prompts"] == 1 and len(res.qa) == 2
    assert valid_entry(json.loads(path.read_text(encoding="utf-8")))
