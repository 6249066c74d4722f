"""augment: each op (determinism, seeds, what it may touch), engines and their failures, the stage core."""

from __future__ import annotations

import random
import re
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policytune.lm.chat_format import to_messages
from policytune.lm.backends import Completion
from policytune.core.params import ParamsError
from policytune.core.records import read_json, read_jsonl, write_jsonl
from stages import augment as A

HAVE_APERTIUM = shutil.which("apertium") is not None and Path("/usr/share/apertium/modes/eng-spa.mode").exists()
HAVE_WORDNET = Path("/usr/share/wordnet/data.noun").exists() and Path("/usr/share/wordnet/index.sense").exists()
needs_apertium = pytest.mark.skipif(not HAVE_APERTIUM, reason="needs `apt-get install apertium apertium-eng-spa`")
needs_wordnet = pytest.mark.skipif(not HAVE_WORDNET, reason="needs `apt-get install wordnet-base wordnet-sense-index`")

SENTENCE = "The employee must submit the request quickly"
QUESTIONS = [
    "How many days of annual leave do employees get after 5 years?",
    "Who must approve a purchase above 25,000 EUR?",
    "Can I use a generative AI tool to summarise patient records?",
    "What happens if an expense claim is submitted after 90 days?",
    "Which documents must a contractor provide before starting work?",
]


def train_row(i: int, question: str, answer: str | None = None) -> dict:
    answer = answer or f"See section {i + 1}: the limit is {100 + i} EUR."
    return {"qa_id": f"qa{i:03d}", "question": question, "answer": answer, "chunk_id": f"c{i}",
            "doc_id": "d0", "url": "file://x", "teacher": {"backend": "local", "model": "m", "prompt_sha": "p"},
            "split": "train", "messages": to_messages(question, answer, system="SYS")}


def skeleton(text: str) -> str:
    """Text with every letter run replaced by one placeholder: what char ops must keep."""
    return A.WORD_RE.sub("#", text)


# --------------------------------------------------------------------------------------------- char ops

CHAR = A.CharConfig()


@pytest.mark.parametrize("op", [A.char_delete, A.char_swap])
def test_char_ops_deterministic_and_seed_sensitive(op):
    for q in QUESTIONS:
        assert op(q, random.Random(7), CHAR) == op(q, random.Random(7), CHAR)
        assert op(q, random.Random(7), CHAR) != q
        outs = {op(q, random.Random(s), CHAR) for s in range(10)}
        assert len(outs) > 1, f"10 seeds gave one output for {q!r}"


letters_text = st.text(alphabet=st.sampled_from(list("abcdeXYZé 0123456789,.-'?!\n")), max_size=80)


@settings(max_examples=200, deadline=None)
@given(text=letters_text, seed=st.integers(0, 2**32 - 1))
def test_char_delete_only_removes_inner_letters(text, seed):
    out = A.char_delete(text, random.Random(seed), CHAR)
    assert skeleton(out) == skeleton(text)  # digits, punctuation, spaces untouched; no word vanishes
    for w, v in zip(A.WORD_RE.findall(text), A.WORD_RE.findall(out)):
        assert v[0] == w[0] and v[-1] == w[-1]
        assert len(v) <= len(w) and (len(w) >= CHAR.min_word_len or v == w)
        it = iter(w)
        assert all(c in it for c in v)  # v is a subsequence of w: letters deleted, never added


@settings(max_examples=200, deadline=None)
@given(text=letters_text, seed=st.integers(0, 2**32 - 1))
def test_char_swap_only_permutes_inner_letters(text, seed):
    out = A.char_swap(text, random.Random(seed), CHAR)
    assert skeleton(out) == skeleton(text)
    for w, v in zip(A.WORD_RE.findall(text), A.WORD_RE.findall(out)):
        assert v[0] == w[0] and v[-1] == w[-1] and sorted(v) == sorted(w)
        # only neighbours swapped: every letter moved by at most one place
        assert all(c in w[max(0, i - 1):i + 2] for i, c in enumerate(v))


def test_char_ops_leave_short_words_and_numbers():
    text = "Is it 25,000 EUR or 2.5%?"
    assert A.char_delete(text, random.Random(0), CHAR) == text  # no word of >= 4 letters
    assert A.char_swap(text, random.Random(0), CHAR) == text


# --------------------------------------------------------------------------------------------- synonyms

@pytest.fixture(scope="module")
def synonym(tmp_path_factory):
    if not HAVE_WORDNET:
        pytest.skip("needs `apt-get install wordnet-base wordnet-sense-index`")
    cfg = A.SynonymConfig(nltk_data=str(tmp_path_factory.mktemp("nltk_data")))
    return A.SynonymReplacer(cfg)


def _synonym_pair(wn, old: str, new: str) -> bool:
    """Do ``old`` and ``new`` share a WordNet synset (allowing the -s inflection)?"""
    olds = {old.lower()} | ({old.lower()[:-1], old.lower()[:-2]} if old.endswith("s") else set())
    news = {new.lower().replace(" ", "_")}
    if new.endswith("s"):
        news |= {new.lower()[:-1].replace(" ", "_"), new.lower()[:-2].replace(" ", "_"),
                 re.sub("ies$", "y", new.lower()).replace(" ", "_")}
    for o in olds:
        for s in wn.synsets(o):
            names = {l.name().lower() for l in s.lemmas()}
            if names & news:
                return True
    return False


def test_synonym_replaces_with_a_wordnet_synonym(synonym):
    seen = set()
    for seed in range(20):
        out = synonym(SENTENCE, random.Random(seed))
        assert out == synonym(SENTENCE, random.Random(seed))  # deterministic
        assert out != SENTENCE
        seen.add(out)
        a, b = SENTENCE.split(), out.split()
        # exactly one word replaced (rate 0.15 of 3 candidates, at least one), by a synonym
        i = next(k for k in range(len(a)) if a[k] != b[k])
        new = " ".join(b[i:len(b) - (len(a) - i - 1)])
        assert a[:i] == b[:i] and a[i + 1:] == b[len(b) - (len(a) - i - 1):]
        assert a[i] not in A.STOPWORDS
        assert _synonym_pair(synonym.wn, a[i], new), f"{a[i]!r} -> {new!r} is not a WordNet synonym"
    assert len(seen) > 1  # different seeds differ


def test_synonym_keeps_names_numbers_and_stopwords(synonym):
    text = "Does the GDPR apply in Lyon for 30 days?"
    for seed in range(10):
        out = synonym(text, random.Random(seed))
        for keep in ("Does the GDPR ", " in Lyon for 30 days?"):
            assert keep in out


def test_synonym_reinflects_plurals(synonym):
    assert "penalties" not in synonym.synonyms("penalties", "")
    assert all(s.endswith("s") for s in synonym.synonyms("penalties", ""))
    assert all(not s.endswith("ys") for s in synonym.synonyms("requirements", ""))


def test_missing_wordnet_is_a_clear_error(tmp_path):
    cfg = A.SynonymConfig(wordnet_dir=str(tmp_path / "nowhere"), nltk_data=str(tmp_path / "nltk"))
    with pytest.raises(A.EngineUnavailable, match=r"apt-get install wordnet-base wordnet-sense-index"):
        A.SynonymReplacer(cfg)


def test_wordnet_folder_is_built_offline(tmp_path):
    if not HAVE_WORDNET:
        pytest.skip("needs wordnet-base")
    from policytune.dataset.wordnet import LEXNAMES, ensure_nltk_wordnet

    root = ensure_nltk_wordnet(tmp_path / "nd") / "corpora" / "wordnet"
    lines = (root / "lexnames").read_text().splitlines()
    assert len(lines) == 45 and lines[0].split() == ["00", "adj.all", "3"] and lines == LEXNAMES.splitlines()
    assert (tmp_path / "nd" / ".gitignore").read_text() == "*\n"
    assert not any(p.is_symlink() for p in root.iterdir())


# --------------------------------------------------------------------------------------------- back translation

@pytest.fixture(scope="module")
def apertium():
    if not HAVE_APERTIUM:
        pytest.skip("needs `apt-get install apertium apertium-eng-spa`")
    return A.ApertiumEngine(A.BackTranslationConfig(timeout_s=60))


@needs_apertium
def test_apertium_round_trip_changes_wording_keeps_numbers(apertium):
    res = apertium.translate_batch(QUESTIONS)
    assert len(res) == len(QUESTIONS)
    changed = 0
    for q, (text, reason) in zip(QUESTIONS, res):
        assert text and not reason
        assert A.numbers_of(text) == A.numbers_of(q), (q, text)
        assert "*" not in text and "#" not in text
        changed += text != q
    assert changed >= 3


@needs_apertium
def test_apertium_batch_keeps_alignment(apertium):
    odd = ["", "   ", "Line one.\nStill line one.", "[x] {y} <b> a\\b ^$ /* @#", "Résumé café?"]
    texts = QUESTIONS + odd + QUESTIONS[::-1]
    batched = apertium.translate_batch(texts)
    assert batched == apertium.translate_batch(texts[::-1])[::-1]  # neighbours do not matter
    assert batched[5:7] == [("", ""), ("", "")]
    for i in (7, 8, 9):  # the odd ones one at a time: same as inside the batch
        assert apertium.translate_batch([texts[i]]) == [batched[i]]


def test_apertium_bisects_on_misaligned_output(monkeypatch):
    eng = A.ApertiumEngine.__new__(A.ApertiumEngine)
    eng.cfg = A.BackTranslationConfig(batch_size=64)
    eng.fwd, eng.back = "eng-spa", "spa-eng"

    def fake_run(mode, lines):  # batches with a poisoned line come back one line short
        if any("POISON" in x for x in lines):
            return None  # line count out of step, even for the poisoned line alone
        return [x.upper() if mode == "eng-spa" else x.lower().replace("?", "!") for x in lines]

    monkeypatch.setattr(eng, "_run", fake_run)
    texts = [f"text {i}?" for i in range(10)] + ["POISON"] + [f"more {i}?" for i in range(5)]
    res = eng.translate_batch(texts)
    assert res[10] == (None, "engine_misaligned")
    assert [r[0] for r in res[:10]] == [f"text {i}!" for i in range(10)]
    assert [r[0] for r in res[11:]] == [f"more {i}!" for i in range(5)]


def test_apertium_missing_binary_or_pair_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(A.shutil, "which", lambda name: None)
    with pytest.raises(A.EngineUnavailable, match=r"apt-get install apertium apertium-eng-spa"):
        A.ApertiumEngine(A.BackTranslationConfig())


@needs_apertium
def test_apertium_missing_pair_is_a_clear_error():
    with pytest.raises(A.EngineUnavailable, match=r"apt-get install apertium apertium-eng-xx"):
        A.ApertiumEngine(A.BackTranslationConfig(pivot="xx"))


def test_google_engine_offline_fails_fast_with_clear_error(monkeypatch):
    """No DNS (the usual offline case): a clear error at once, no network touched."""

    def no_dns(*a, **k):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    t0 = time.monotonic()
    with pytest.raises(A.EngineUnavailable, match=r"needs network access.*apertium"):
        A.GoogleEngine(A.BackTranslationConfig(engine="google", timeout_s=5))
    assert time.monotonic() - t0 < 5


def test_google_engine_blackholed_network_is_bounded_by_timeout():
    """A network that accepts and never answers (deep-translator sets no timeout): our bound."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    held = []
    stop = threading.Event()

    def accept():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])  # accept, then never say anything
            except OSError:
                pass

    th = threading.Thread(target=accept, daemon=True)
    th.start()
    try:
        cfg = A.BackTranslationConfig(engine="google", timeout_s=1.0,
                                      google_proxy=f"http://127.0.0.1:{srv.getsockname()[1]}")
        t0 = time.monotonic()
        with pytest.raises(A.EngineUnavailable, match=r"needs network access.*TimeoutError"):
            A.GoogleEngine(cfg)
        assert time.monotonic() - t0 < 4
    finally:
        stop.set()
        th.join(2)
        for c in held:
            c.close()
        srv.close()


class FakeBackend:
    """A policytune.lm.backends-shaped backend that 'translates' by tagging the text."""

    model_id = "fake-teacher"

    def __init__(self, cut: str = ""):
        self.calls, self.cut = [], cut

    def chat(self, batch, *, max_new_tokens, temperature=0.0, seed=0, prefill=None):
        self.calls.append((batch, max_new_tokens, temperature))
        outs = []
        for msgs in batch:
            text = msgs[-1]["content"]
            if self.cut and self.cut in text:
                outs.append(Completion(text=text[:5], n_tokens=max_new_tokens, finish_reason="length"))
            elif "into Spanish" in msgs[0]["content"]:
                outs.append(Completion(text=f'"ES {text}"', n_tokens=5, finish_reason="stop"))
            else:
                outs.append(Completion(text=text.replace("ES ", "") + " please\n\nNote: done", n_tokens=5,
                                       finish_reason="stop"))
        return outs


def test_teacher_engine_translates_there_and_back():
    fb = FakeBackend(cut="CUT")
    eng = A.TeacherEngine(A.BackTranslationConfig(engine="teacher"), backend=fb)
    res = eng.translate_batch(["Who signs?", "CUT this one", "How  long\nis it?"])
    assert res[0] == ("Who signs? please", "")
    assert res[1] == (None, "engine_truncated")
    assert res[2] == ("How long is it? please", "")
    (b1, mt, temp), (b2, _, _) = fb.calls
    assert temp == 0.0 and len(b1) == 3 and len(b2) == 2  # the cut one is not sent back
    assert b1[0][0]["role"] == "system" and "English text into Spanish" in b1[0][0]["content"]
    assert "Spanish text into English" in b2[0][0]["content"]


def test_teacher_engine_without_model_folder_is_a_clear_error(tmp_path):
    cfg = A.BackTranslationConfig(engine="teacher", teacher=A.TeacherConfig(model_dir=str(tmp_path / "none")))
    with pytest.raises(A.EngineUnavailable, match=r"prepare_models@teacher"):
        A.TeacherEngine(cfg)


# --------------------------------------------------------------------------------------------- stage core

class UpperEngine:
    """Back translation stand-in: deterministic, changes wording, keeps numbers (except one)."""

    name = "fake"

    def translate_batch(self, texts):
        return [(t.replace("42", "43"), "") if "42" in t else (t.upper(), "") for t in texts]


def rows_for(n: int) -> list[dict]:
    return [train_row(i, QUESTIONS[i % len(QUESTIONS)] + f" (case {i})") for i in range(n)]


def run(rows, **kw):
    cfg = A.AugmentConfig(**kw)
    eng = A.Engines(synonym=None, back_translation=UpperEngine())
    if "weights" not in kw:
        cfg.weights = {"synonym": 0, "back_translation": 1, "char_delete": 1, "char_swap": 1}
    return A.augment_records(rows, cfg, eng)


def test_augmented_rows_lineage_messages_and_clean_answers():
    rows = rows_for(30)
    out, skipped, stats = run(rows)
    parents = {r["qa_id"]: r for r in rows}
    aug = [r for r in out if r["augmentation"]]
    assert len(aug) + len(skipped) == 30 and stats["rows_out"] == 30 + len(aug)
    assert [{k: v for k, v in r.items() if k != "augmentation"} for r in out if not r["augmentation"]] == rows
    assert all(set(r) == set(aug[0]) for r in out)  # one schema
    assert {r["augmentation"]["op"] for r in aug} == {"back_translation", "char_delete", "char_swap"}
    for r in aug:
        p = parents[r["augmentation"]["parent_qa_id"]]
        assert r["qa_id"] not in parents and r["question"] != p["question"]
        assert r["answer"] == p["answer"]  # answers untouched by default
        assert r["messages"] == [{"role": "system", "content": "SYS"}, {"role": "user", "content": r["question"]},
                                 {"role": "assistant", "content": p["answer"]}]
        assert r["split"] == "train" and r["chunk_id"] == p["chunk_id"]
        assert set(r["augmentation"]) >= {"op", "seed", "parent_qa_id", "engine"}
        assert r["augmentation"]["engine"] == ("fake" if r["augmentation"]["op"] == "back_translation" else None)
    assert len({r["qa_id"] for r in out}) == len(out)
    assert sum(stats["augmented_by_op"].values()) == len(aug)


def test_augment_is_deterministic_per_record():
    rows = rows_for(20)
    out1, _, _ = run(rows, seed=3)
    out2, _, _ = run(rows, seed=3)
    assert out1 == out2
    # adding and removing rows changes no other row's augmentation
    out3, _, _ = run([train_row(99, "A brand new question about travel?")] + rows[5:], seed=3)
    by_parent = lambda out: {r["augmentation"]["parent_qa_id"]: r for r in out if r["augmentation"]}
    b1, b3 = by_parent(out1), by_parent(out3)
    for qid in (r["qa_id"] for r in rows[5:]):
        assert b1.get(qid) == b3.get(qid)
    out4, _, _ = run(rows, seed=4)
    assert out4 != out1  # another seed, other augmentations


def test_unchanged_and_number_changes_are_skipped_and_counted():
    rows = [train_row(0, "Is it OK?"), train_row(1, "Is the 42 EUR limit per day?")]
    out, skipped, stats = run(rows, weights={"char_swap": 1})
    assert stats["skipped_by_reason"] == {"unchanged": 1}  # no word of 4+ letters to alter
    out, skipped, stats = run(rows[1:], weights={"back_translation": 1})
    assert stats["skipped_by_reason"] == {"numbers_changed": 1} and len(out) == 1
    assert skipped[0]["parent_qa_id"] == "qa001" and skipped[0]["op"] == "back_translation"


def test_copies_weights_and_answer_augmentation():
    rows = rows_for(10)
    out, skipped, stats = run(rows, copies=3, weights={"char_delete": 1, "char_swap": 0})
    aug = [r for r in out if r["augmentation"]]
    assert {r["augmentation"]["op"] for r in aug} == {"char_delete"}
    assert len(aug) + len(skipped) == 30
    assert all(s["reason"] == "duplicate_copy" for s in skipped)
    out, _, _ = run(rows, weights={"char_swap": 1}, augment_answer=True)
    aug = [r for r in out if r["augmentation"]]
    parents = {r["qa_id"]: r for r in rows}
    assert aug and all(r["augmentation"]["fields"] == ["question", "answer"] for r in aug)
    assert sum(r["answer"] != parents[r["augmentation"]["parent_qa_id"]]["answer"] for r in aug) >= len(aug) // 2
    assert all(r["messages"][-1]["content"] == r["answer"] for r in aug)


def test_bad_params_and_non_train_rows():
    with pytest.raises(ParamsError, match="unknown op"):
        run(rows_for(2), weights={"synonyms": 1})
    with pytest.raises(ParamsError, match="engine"):
        A.check_config(A.AugmentConfig(back_translation=A.BackTranslationConfig(engine="deepl")))
    bad = rows_for(1)
    bad[0]["split"] = "test"
    with pytest.raises(ValueError, match="train rows only"):
        run(bad)


def test_engines_only_built_when_weighted(monkeypatch):
    monkeypatch.setattr(A.shutil, "which", lambda name: None)
    cfg = A.AugmentConfig(weights={"char_delete": 1, "back_translation": 0})
    eng = A.make_engines(cfg)  # apertium missing, but nobody asked for it
    assert eng.synonym is None and eng.back_translation is None
    with pytest.raises(A.EngineUnavailable, match="apt-get install apertium"):
        A.make_engines(A.AugmentConfig(weights={"back_translation": 1}))


# --------------------------------------------------------------------------------------------- main()

@needs_apertium
def test_main_writes_outputs_and_stats(tmp_path):
    rows = rows_for(12)
    write_jsonl(tmp_path / "train.jsonl", rows)
    (tmp_path / "params.yaml").write_text(
        "augment:\n  seed: 1\n  weights: {back_translation: 1, char_delete: 1, char_swap: 1}\n")
    args = ["--params", str(tmp_path / "params.yaml"), "--input", str(tmp_path / "train.jsonl"),
            "--output", str(tmp_path / "out.jsonl"), "--skipped", str(tmp_path / "skipped.jsonl"),
            "--stats", str(tmp_path / "stats.json")]
    A.main(args)
    out = read_jsonl(tmp_path / "out.jsonl")
    stats = read_json(tmp_path / "stats.json")
    assert stats["rows_in"] == 12 and stats["rows_out"] == len(out)
    assert stats["augmented"] + stats["skipped"] == 12
    assert "apertium" in stats["engines"]["back_translation"]
    assert len(read_jsonl(tmp_path / "skipped.jsonl")) == stats["skipped"]


def test_main_missing_engine_exits_with_install_hint(tmp_path, monkeypatch):
    write_jsonl(tmp_path / "train.jsonl", rows_for(2))
    (tmp_path / "params.yaml").write_text("augment:\n  weights: {back_translation: 1}\n")
    monkeypatch.setattr(A.shutil, "which", lambda name: None)
    with pytest.raises(SystemExit, match="apt-get install apertium apertium-eng-spa"):
        A.main(["--params", str(tmp_path / "params.yaml"), "--input", str(tmp_path / "train.jsonl"),
                "--output", str(tmp_path / "o.jsonl"), "--stats", str(tmp_path / "s.json")])
