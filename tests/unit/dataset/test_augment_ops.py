"""augment ops: each op (determinism, seeds, what it may touch) and the WordNet synonym replacer."""

from __future__ import annotations

import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policytune.dataset import augment_ops as O
from policytune.dataset.translate import EngineUnavailable
from tests.helpers.augment_rows import HAVE_WORDNET, QUESTIONS, SENTENCE


def skeleton(text: str) -> str:
    """Text with every letter run replaced by one placeholder: what char ops must keep."""
    return O.WORD_RE.sub("#", text)


# --------------------------------------------------------------------------------------------- char ops

CHAR = O.CharConfig()


@pytest.mark.parametrize("op", [O.char_delete, O.char_swap])
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
    out = O.char_delete(text, random.Random(seed), CHAR)
    assert skeleton(out) == skeleton(text)  # digits, punctuation, spaces untouched; no word vanishes
    for w, v in zip(O.WORD_RE.findall(text), O.WORD_RE.findall(out)):
        assert v[0] == w[0] and v[-1] == w[-1]
        assert len(v) <= len(w) and (len(w) >= CHAR.min_word_len or v == w)
        it = iter(w)
        assert all(c in it for c in v)  # v is a subsequence of w: letters deleted, never added


@settings(max_examples=200, deadline=None)
@given(text=letters_text, seed=st.integers(0, 2**32 - 1))
def test_char_swap_only_permutes_inner_letters(text, seed):
    out = O.char_swap(text, random.Random(seed), CHAR)
    assert skeleton(out) == skeleton(text)
    for w, v in zip(O.WORD_RE.findall(text), O.WORD_RE.findall(out)):
        assert v[0] == w[0] and v[-1] == w[-1] and sorted(v) == sorted(w)
        # only neighbours swapped: every letter moved by at most one place
        assert all(c in w[max(0, i - 1):i + 2] for i, c in enumerate(v))


def test_char_ops_leave_short_words_and_numbers():
    text = "Is it 25,000 EUR or 2.5%?"
    assert O.char_delete(text, random.Random(0), CHAR) == text  # no word of >= 4 letters
    assert O.char_swap(text, random.Random(0), CHAR) == text


# --------------------------------------------------------------------------------------------- synonyms

@pytest.fixture(scope="module")
def synonym(tmp_path_factory):
    if not HAVE_WORDNET:
        pytest.skip("needs `apt-get install wordnet-base wordnet-sense-index`")
    cfg = O.SynonymConfig(nltk_data=str(tmp_path_factory.mktemp("nltk_data")))
    return O.SynonymReplacer(cfg)


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
        assert a[i] not in O.SYNONYM_STOPWORDS
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
    cfg = O.SynonymConfig(wordnet_dir=str(tmp_path / "nowhere"), nltk_data=str(tmp_path / "nltk"))
    with pytest.raises(EngineUnavailable, match=r"apt-get install wordnet-base wordnet-sense-index"):
        O.SynonymReplacer(cfg)

