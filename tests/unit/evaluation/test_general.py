"""The general-skill forgetting check: the shipped question set (data/general_skills.jsonl) loads
and validates, and ``accept_score`` follows its documented rules (whole-token match after
normalisation, numbers canonical, lenient about negation, total, linear time). Fast and offline."""

from __future__ import annotations

import json
import time
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policytune.evaluation.general import accept_score, answer_tokens, read_general_set, skills
from tests.helpers.repo import REPO

SHIPPED = REPO / "data" / "general_skills.jsonl"
CATEGORIES = {"world", "arithmetic", "units", "language", "science"}


# --------------------------------------------------------------------------- the shipped set

@pytest.fixture(scope="module")
def shipped() -> list[dict]:
    return read_general_set(SHIPPED)


def test_shipped_set_loads_with_40_unique_rows(shipped):
    assert len(shipped) == 40
    ids = [r["qa_id"] for r in shipped]
    assert len(set(ids)) == 40
    assert ids == [f"gen-{i:02d}" for i in range(1, 41)]


def test_shipped_set_covers_every_category(shipped):
    counts = skills(shipped)
    assert set(counts) == CATEGORIES
    assert all(n >= 6 for n in counts.values()), counts


def test_shipped_questions_are_distinct_and_short(shipped):
    questions = [r["question"].casefold() for r in shipped]
    assert len(set(questions)) == len(questions)
    for r in shipped:
        assert r["question"].rstrip().endswith("?"), r["qa_id"]
        assert len(r["answer"]) <= 80 and r["answer"].rstrip().endswith("."), r["qa_id"]
        assert all(len(a) <= 30 for a in r["accept"]), r["qa_id"]


def test_shipped_reference_answer_is_accepted(shipped):
    for r in shipped:
        assert accept_score(r["answer"], r["accept"]) == 1.0, r["qa_id"]


def test_shipped_question_does_not_give_its_answer_away(shipped):
    """A model that only repeats the question must not score: no alias occurs in the question."""
    for r in shipped:
        assert accept_score(r["question"], r["accept"]) == 0.0, r["qa_id"]


def test_shipped_file_is_tracked_by_git_not_ignored():
    import subprocess

    res = subprocess.run(["git", "check-ignore", "-q", str(SHIPPED)], cwd=REPO, capture_output=True, check=False)
    if res.returncode == 128:
        pytest.skip("not a git checkout")
    assert res.returncode == 1, "data/general_skills.jsonl is ignored by git; it is committed source data"


# --------------------------------------------------------------------------- accept_score

@pytest.mark.parametrize("answer,accept,expected", [
    # boundaries: whole tokens only
    ("15% of 200 is 30.", ["30"], 1.0),
    ("It is 300.", ["30"], 0.0),
    ("It is 3.0 or 130.", ["30"], 0.0),
    ("The past tense is went.", ["went"], 1.0),
    ("Wentworth is a town.", ["went"], 0.0),
    ("Parisian food", ["Paris"], 0.0),
    # case, punctuation, Unicode
    ("PARIS!!!", ["paris"], 1.0),
    ("«Paris»", ["Paris"], 1.0),
    ("The answer: 'mice'.", ["mice"], 1.0),
    ("carbon-dioxide", ["carbon dioxide"], 1.0),
    ("Plants take in CO₂.", ["CO2"], 1.0),
    ("Ｐａｒｉｓ", ["Paris"], 1.0),
    ("Brasília", ["Brasilia"], 1.0),
    ("Straße", ["STRASSE"], 1.0),
    ("carbon  \n dioxide", ["carbon dioxide"], 1.0),
    ("carbon monoxide and oxygen", ["carbon dioxide"], 0.0),
    # aliases: any one is enough
    ("Plants absorb CO2.", ["carbon dioxide", "CO2"], 1.0),
    ("Plants absorb carbon dioxide.", ["carbon dioxide", "CO2"], 1.0),
    ("Plants absorb oxygen.", ["carbon dioxide", "CO2"], 0.0),
    # numbers canonical
    ("There are 120.0 minutes.", ["120"], 1.0),
    ("There are 120 minutes.", ["120.0"], 1.0),
    ("1,000 grams", ["1000"], 1.0),
    ("1000 grams", ["1,000"], 1.0),
    ("0.50", ["0.5"], 1.0),
    ("120minutes", ["120"], 1.0),
    ("It is 12.5.", ["12"], 0.0),
    # number words (English cardinals)
    ("one hundred twenty minutes", ["120"], 1.0),
    ("one hundred and twenty minutes", ["120"], 1.0),
    ("There are twenty-four hours.", ["24"], 1.0),
    ("seven days", ["7"], 1.0),
    ("7 days", ["seven"], 1.0),
    ("three hundred sixty-six days", ["366"], 1.0),
    ("one thousand grams", ["1000"], 1.0),
    ("twenty-five", ["25"], 1.0),
    ("twenty-five", ["20"], 0.0),
    ("one hundred twenty", ["100"], 0.0),
    ("the second one", ["2"], 0.0),
    # lenient about negation and hedging: the alias is mentioned, so it counts
    ("not Paris", ["Paris"], 1.0),
    ("It is definitely not Paris, it is Lyon.", ["Paris"], 1.0),
    ("Paris or Rome", ["Rome"], 1.0),
    # empty and vacuous
    ("", ["Paris"], 0.0),
    ("   ", ["Paris"], 0.0),
    ("...", ["Paris"], 0.0),
    ("Paris", [], 0.0),
    ("Paris", [""], 0.0),
    ("Paris", ["!!"], 0.0),
])
def test_accept_score_known_cases(answer, accept, expected):
    assert accept_score(answer, accept) == expected


@pytest.mark.parametrize("answer,accept,expected", [
    (None, ["Paris"], 0.0),
    ("Paris", None, 0.0),
    (None, None, 0.0),
    ("Paris", "Paris", 1.0),              # a bare string is one alias
    (b"Paris", [b"paris"], 1.0),
    ("120", [120], 1.0),
    ("120", [120.0], 1.0),
    (120, ["120"], 1.0),
    ("Paris", [None, 3, object(), "Paris"], 1.0),
    ("\ud800 Paris \udfff", ["paris"], 1.0),  # lone surrogates
    (b"\xff\xfe Paris", ["Paris"], 1.0),     # invalid UTF-8
    ("Paris", iter(["x", "paris"]), 1.0),
    ("Paris", 42, 0.0),
])
def test_accept_score_is_total(answer, accept, expected):
    assert accept_score(answer, accept) == expected


class _BadStr:
    def __str__(self):
        raise RuntimeError("boom")


def test_accept_score_survives_objects_that_refuse_str():
    assert accept_score(10 ** 5000, ["1"]) == 0.0  # str() of this int raises (int_max_str_digits)
    assert accept_score(_BadStr(), [_BadStr()]) == 0.0
    assert accept_score("Paris", [_BadStr(), "Paris"]) == 1.0


@settings(max_examples=300, deadline=None)
@given(answer=st.one_of(st.none(), st.text(), st.binary(), st.integers(), st.floats()),
       accept=st.one_of(st.none(), st.text(), st.lists(st.one_of(st.text(), st.none(), st.integers()), max_size=5)))
def test_accept_score_never_raises(answer, accept):
    assert accept_score(answer, accept) in (0.0, 1.0)


@settings(max_examples=200, deadline=None)
@given(alias=st.text(min_size=1, max_size=20), before=st.text(max_size=20), after=st.text(max_size=20))
def test_alias_surrounded_by_spaces_is_found(alias, before, after):
    """An alias with tokens, set off by spaces, always matches (answers are normalised the same
    way as aliases). The flanks are cut to letters-free text so they cannot extend a number
    phrase or a token run."""
    flank_b = "".join(c for c in before if not c.isalnum())
    flank_a = "".join(c for c in after if not c.isalnum())
    if answer_tokens(alias) and answer_tokens(flank_b) == [] and answer_tokens(flank_a) == []:
        assert accept_score(f"{flank_b} {alias} {flank_a}", [alias]) == 1.0


def test_answer_tokens_documented_examples():
    assert answer_tokens("The capital is PARIS.") == ["the", "capital", "is", "paris"]
    assert answer_tokens("There are one hundred and twenty minutes") == ["there", "are", "120", "minutes"]
    assert answer_tokens("1,000.50 and 007") == ["1000.5", "and", "7"]
    assert answer_tokens("CO₂") == ["co", "2"]
    assert answer_tokens("No one knows") == ["no", "1", "knows"]  # the pronoun "one" becomes 1 too


@pytest.mark.parametrize("name,text", [
    ("prose", "The capital of France is Paris, and 15% of 200 is 30. " * 19000),
    ("digits", "7" * 1_000_000),
    ("thousands", "1,000" * 200_000),
    ("dotted", "1." * 500_000),
    ("number words", "one hundred and twenty-four thousand " * 27000),
    ("punctuation", "!?.,;:-" * 143_000),
    ("cjk", "東京" * 500_000),
    ("accents", "é" * 1_000_000),
], ids=lambda v: v if len(v) < 20 else "")
def test_accept_score_on_1mb_is_fast(name, text):
    assert len(text) >= 900_000
    accept = ["Wentworth", "carbon dioxide", "a " * 500 + "b", "nowhere"]
    t0 = time.perf_counter()
    score = accept_score(text, accept)
    assert time.perf_counter() - t0 < 1.0, name
    assert score == 0.0


def test_accept_score_finds_alias_at_the_end_of_1mb():
    text = "filler words " * 80_000 + "the answer is 30"
    assert len(text) > 1_000_000
    t0 = time.perf_counter()
    assert accept_score(text, ["thirty"]) == 1.0
    assert time.perf_counter() - t0 < 1.0


# --------------------------------------------------------------------------- read_general_set

GOOD = {"qa_id": "gen-01", "question": "What is 2 plus 2?", "answer": "2 plus 2 is 4.",
        "accept": ["4", "four"], "skill": "arithmetic"}


def write(tmp_path, lines: list[str]):
    p = tmp_path / "set.jsonl"
    p.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return p


def row(**kw) -> str:
    return json.dumps({**GOOD, **kw})


def test_read_general_set_reads_good_rows_and_skips_blank_lines(tmp_path):
    p = write(tmp_path, [row(), "", "   ", row(qa_id="gen-02", extra="kept")])
    rows = read_general_set(p)
    assert [r["qa_id"] for r in rows] == ["gen-01", "gen-02"]
    assert rows[1]["extra"] == "kept"


@pytest.mark.parametrize("bad,fragment", [
    ("{not json", "invalid JSON"),
    ("[1, 2]", "JSON object"),
    ('"a string"', "JSON object"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "accept"}), "missing ['accept']"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "skill"}), "missing ['skill']"),
    (row(qa_id=7), "qa_id must be a non-empty string"),
    (row(qa_id=""), "qa_id must be a non-empty string"),
    (row(question=None), "question must be a non-empty string"),
    (row(answer="  "), "answer must be a non-empty string"),
    (row(skill=["world"]), "skill must be a non-empty string"),
    (row(accept="four"), "accept must be a non-empty list"),
    (row(accept=[]), "accept must be a non-empty list"),
    (row(accept=["4", 4]), "accept holds 4"),
    (row(accept=["4", ""]), "accept holds ''"),
    (row(accept=["4", "?!"]), "can never match"),
])
def test_read_general_set_names_the_line_of_a_bad_row(tmp_path, bad, fragment):
    p = write(tmp_path, [row(qa_id="gen-a"), "", row(qa_id="gen-b"), bad])
    with pytest.raises(ValueError) as e:
        read_general_set(p)
    assert f"{p}:4:" in str(e.value)
    assert fragment in str(e.value)


def test_read_general_set_rejects_duplicate_ids_with_both_lines(tmp_path):
    p = write(tmp_path, [row(qa_id="gen-01"), row(qa_id="gen-02"), row(qa_id="gen-01")])
    with pytest.raises(ValueError, match=r":3: duplicate qa_id 'gen-01' \(first on line 1\)"):
        read_general_set(p)


def test_read_general_set_rejects_invalid_utf8_with_line(tmp_path):
    p = tmp_path / "set.jsonl"
    p.write_bytes(row().encode() + b"\n" + b'{"qa_id": "\xff"}\n')
    with pytest.raises(ValueError, match=r":2: not UTF-8"):
        read_general_set(p)


def test_read_general_set_rejects_an_empty_file(tmp_path):
    p = write(tmp_path, ["", " "])
    with pytest.raises(ValueError, match="no rows"):
        read_general_set(p)


def test_read_general_set_accepts_a_utf8_bom(tmp_path):
    p = tmp_path / "set.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + row().encode() + b"\n")
    assert [r["qa_id"] for r in read_general_set(p)] == ["gen-01"]


def test_skills_counts_rows_per_category():
    assert skills([{"skill": "b"}, {"skill": "a"}, {"skill": "b"}]) == {"a": 1, "b": 2}
    assert Counter(r["skill"] for r in read_general_set(SHIPPED)) == Counter(skills(read_general_set(SHIPPED)))
