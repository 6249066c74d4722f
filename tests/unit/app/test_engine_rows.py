"""policytune.lm.engine on the tiny model: sampling settings are bounded, and one row never fails another.

The engine runs the chat server's answers (tests/unit/app/test_serve*.py go through HTTP); these
tests drive it directly. To put rows in one batch for certain, requests are submitted to an engine
that is not started yet, then it is started: its first step admits them all together
(``peak_batch`` checks it). Before this change ``temperature: 1e-300`` divided the logits into
inf/NaN and the failed ``multinomial`` failed every row of the batch.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from policytune.lm.engine import (MIN_TEMPERATURE, Engine, InvalidRequest, check_sampling, sample)
from policytune.lm.generation import stop_token_ids
from tests.helpers.chat import tiny_model_dir

QUESTION = "Who approves annual leave?"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def lm(request, tmp_path_factory):
    from policytune.lm.adapters import load_lm, load_tok

    d = tiny_model_dir(request.config, tmp_path_factory)
    model, tok = load_lm(d), load_tok(d)
    return model, tok, stop_token_ids(model, tok)


def engine(lm, **kw) -> Engine:
    model, tok, stops = lm
    return Engine(model, tok, stops, **{"max_batch": 4, "max_waiting": 8, "stream_timeout_s": 60, **kw})


def prompt(lm, question: str = QUESTION) -> list[int]:
    tok = lm[1]
    text = tok.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                   add_generation_prompt=True)
    return tok(text, add_special_tokens=False)["input_ids"]


def alone(lm, ids: list[int], max_new_tokens: int = 12, **kw) -> str:
    e = engine(lm, **kw).start()
    try:
        return e.submit(ids, max_new_tokens=max_new_tokens).text()
    finally:
        e.close()


# --------------------------------------------------------------------------------------------- settings

JSONISH = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(1 << 80), max_value=1 << 80),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=5),
                    st.lists(st.integers(), max_size=2))


@settings(max_examples=400, deadline=None)
@given(temperature=JSONISH, top_p=JSONISH, seed=JSONISH)
def test_check_sampling_accepts_only_safe_settings(temperature, top_p, seed):
    try:
        t, p, s = check_sampling(0.0 if temperature is None else temperature, 1.0 if top_p is None else top_p, seed)
    except InvalidRequest:
        return
    assert t == 0.0 or MIN_TEMPERATURE <= t <= 2.0
    assert 0 < p <= 1 and math.isfinite(p)
    assert s is None or (isinstance(s, int) and 0 <= s < 1 << 64)
    torch.Generator().manual_seed(s if s is not None else 0)  # the seed is always usable


@given(st.floats(min_value=0, max_value=MIN_TEMPERATURE, exclude_max=True))
def test_tiny_temperatures_are_greedy(t):
    assert check_sampling(t)[0] == 0.0


def test_check_sampling_edges():
    assert check_sampling(1e-300) == (0.0, 1.0, None)
    assert check_sampling(2, 1, (1 << 64) - 1)[2] == (1 << 64) - 1
    assert check_sampling(1.0, 0.5, -1)[2] == (1 << 64) - 1  # negative seeds modulo 2**64
    for bad in ({"temperature": 2.01}, {"temperature": -1e-9}, {"temperature": float("nan")},
                {"top_p": 0}, {"top_p": 1.0000001}, {"seed": 1 << 64}, {"seed": -(1 << 63) - 1},
                {"seed": 2 ** 70}, {"seed": True}, {"seed": 1.0}):
        with pytest.raises(InvalidRequest):
            check_sampling(**{"temperature": 1.0, **bad})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(logits=st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False), min_size=1, max_size=40),
       temperature=st.floats(min_value=MIN_TEMPERATURE, max_value=2.0),
       top_p=st.floats(min_value=1e-12, max_value=1.0), seed=st.integers(0, (1 << 64) - 1))
def test_sample_draws_a_valid_token_for_any_finite_logits(logits, temperature, top_p, seed):
    x = torch.tensor(logits, dtype=torch.float32)
    tok = sample(x, temperature, top_p, torch.Generator().manual_seed(seed))
    assert 0 <= tok < len(logits)
    probs = torch.softmax((x - x.max()) / temperature, -1)
    assert probs[tok] > 0  # never a token of probability 0
    if top_p <= 1e-9 and int((probs == probs.max()).sum()) == 1:
        assert tok == int(probs.argmax())  # a tiny nucleus is the most probable token


def test_sample_refuses_non_finite_logits():
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError):
            sample(torch.tensor([0.0, bad, 1.0]), 1.0)


def test_submit_refuses_out_of_range_settings(lm):
    e = engine(lm)  # not started: nothing runs
    ids = prompt(lm)
    for kw in ({"temperature": 5}, {"temperature": float("nan")}, {"top_p": 0}, {"seed": 2 ** 70},
               {"max_new_tokens": 0}):
        with pytest.raises(InvalidRequest):
            e.submit(ids, **{"max_new_tokens": 4, **kw})
    assert e.waiting == 0


# --------------------------------------------------------------------------------------------- row isolation

def test_abusive_rows_in_the_same_batch_leave_the_normal_answer_identical(lm):
    ids = prompt(lm)
    want = alone(lm, ids)
    e = engine(lm)
    try:
        normal = e.submit(ids, max_new_tokens=12)
        tiny_t = e.submit(prompt(lm, "Hi"), max_new_tokens=12, temperature=1e-300)       # greedy now
        nucleus = e.submit(prompt(lm, "Budget?"), max_new_tokens=12, temperature=2.0, top_p=1e-12,
                           seed=(1 << 64) - 1)
        broken = e.submit(prompt(lm, "Remote work?"), max_new_tokens=12, temperature=1.0, seed=1)
        broken.generator = "not a generator"  # its sampling raises at its first token
        e.start()
        got = normal.text()
        for r in (tiny_t, nucleus, broken):
            r.text()
    finally:
        e.close()
    assert e.stats["peak_batch"] == 4  # one batch
    assert got == want and normal.finish_reason in ("stop", "length") and normal.error is None
    assert tiny_t.error is None and tiny_t.finish_reason in ("stop", "length")
    assert tiny_t.completion_tokens >= 1
    assert nucleus.error is None
    assert broken.finish_reason == "error" and "sampling failed" in broken.error
    assert broken.completion_tokens == 0


def test_tiny_temperature_and_tiny_nucleus_answer_as_greedy(lm):
    ids = prompt(lm)
    want = alone(lm, ids)
    e = engine(lm).start()
    try:
        assert e.submit(ids, max_new_tokens=12, temperature=1e-300).text() == want
        assert e.submit(ids, max_new_tokens=12, temperature=2.0, top_p=1e-12, seed=5).text() == want
    finally:
        e.close()


def test_a_failing_prefill_fails_only_its_own_row(lm):
    ids, bad_ids = prompt(lm), prompt(lm, "this prompt breaks the model")
    want = alone(lm, ids)
    e = engine(lm)
    real = e._forward

    def forward(input_ids, attn, pos, cache, rows):
        if any(r.prompt_ids == bad_ids for r in rows) and cache is None:
            raise RuntimeError("simulated failure of one prompt")
        return real(input_ids, attn, pos, cache, rows)

    e._forward = forward
    try:
        bad = e.submit(bad_ids, max_new_tokens=12)
        normal = e.submit(ids, max_new_tokens=12)
        e.start()
        got = normal.text()
        bad.text()
    finally:
        e.close()
    assert got == want and normal.error is None
    assert bad.finish_reason == "error" and "simulated failure" in bad.error


# --------------------------------------------------------------------------------------------- chunked prefill

def test_chunked_prefill_gives_the_same_answers(lm):
    long_q = " ".join(f"clause {i} of the travel policy applies;" for i in range(40)) + " Who approves leave?"
    prompts = [prompt(lm, long_q), prompt(lm), prompt(lm, "Budget?")]
    assert len(prompts[0]) > 200

    def answers(chunk: int) -> list[str]:
        e = engine(lm, prefill_chunk=chunk)
        try:
            replies = [e.submit(p, max_new_tokens=10) for p in prompts]
            e.start()
            return [r.text() for r in replies]
        finally:
            e.close()

    assert answers(16) == answers(100_000)


def test_cancelled_rows_stop_their_prefill_after_one_chunk(lm):
    long_q = " ".join(f"clause {i} of the travel policy applies;" for i in range(40))
    ids = prompt(lm, long_q)
    e = engine(lm, prefill_chunk=16)
    calls = []
    real = e._forward

    def forward(input_ids, attn, pos, cache, rows):
        calls.append(input_ids.shape[1])
        reply.cancel()  # the client goes away during the first chunk
        return real(input_ids, attn, pos, cache, rows)

    e._forward = forward
    try:
        reply = e.submit(ids, max_new_tokens=50)
        e.start()
        assert reply.text() == ""
    finally:
        e.close()
    assert reply.finish_reason == "cancelled" and len(calls) == 1 and len(ids) > 16 * 10
    assert e.stats["generated_tokens"] == 0


def test_pieces_cancels_when_the_consumer_is_gone(lm):
    e = engine(lm)
    try:
        reply = e.submit(prompt(lm), max_new_tokens=50)
        assert list(reply.pieces(gone=lambda: True, poll_s=0.01)) == [] and reply.cancelled
        e.start()
        reply.text()
    finally:
        e.close()
    assert reply.finish_reason == "cancelled" and e.stats["generated_tokens"] == 0
