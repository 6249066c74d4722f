"""Fact-level correctness (policytune.evaluation.facts) on hand-made pairs with known outcomes.

Each normalisation equivalence the module documents is one parametrised case; contradictions,
the leniencies of matching, the facts that must *not* be read (list markers, years inside
dates, section numbers), the 30 sample-FAQ references, and robustness: any text, hostile or
1 MB long, is answered without an exception and in linear time. No model, fast.
"""

from __future__ import annotations

import json
import random
import string
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policytune.evaluation import facts as F
from policytune.evaluation.facts import Fact, extract_facts, fact_scores
from tests.helpers.repo import REPO

FAQ = REPO / "data" / "sample_faq.jsonl"


def triples(text: str) -> list[tuple]:
    return [(f.kind, f.value, f.unit) for f in extract_facts(text)]


def keys(text: str) -> list[tuple]:
    return [f.key() for f in extract_facts(text)]


# --------------------------------------------------------------------------- equivalences

EQUIVALENT = [
    # money
    ("25 EUR", "EUR 25"), ("25 EUR", "€25"), ("25 EUR", "25 euros"), ("25 EUR", "25.00 EUR"),
    ("25 EUR", "25€"), ("25 EUR", "€ 25"), ("$1,200", "1200 USD"), ("$1,200", "1,200 dollars"),
    ("$1,200", "1,200 US dollars"), ("£30", "30 GBP"), ("£30", "30 pounds"),
    ("1,200.50 EUR", "1.200,50 EUR"), ("25k EUR", "25,000 EUR"), ("1.2 million EUR", "€1,200,000"),
    ("€1.2m", "EUR 1,200,000"), ("one hundred EUR", "100 EUR"), ("二十五元", "25 CNY"),
    ("1 200 EUR", "1,200 EUR"), ("¥500", "500円"),
    # durations
    ("ten working days", "10 working days"), ("10 working days", "10 business days"),
    ("30 calendar days", "30 days"), ("a 24-hour line", "24 hours"), ("6-month probation", "6 months"),
    ("twenty-five days", "25 days"), ("one hundred and fifty days", "150 days"), ("two weeks", "2 weeks"), ("5 completed years", "5 years"),
    ("24h", "24 hours"), ("十五日", "15 days"), ("五日", "5 days"), ("5日", "5 days"),
    ("三十天", "30 days"), ("3个月", "3 months"), ("٣ أيام", "3 days"), ("١٥ days", "15 days"),
    ("１２ weeks", "12 weeks"), ("the 5th working day", "5 working days"),
    # percentages
    ("15%", "15 percent"), ("15%", "15 per cent"), ("３０％", "30%"), ("12,5 %", "12.5%"),
    ("5 percentage points", "5%"), ("fifteen percent", "15%"),
    # dates and times
    ("1 March 2025", "2025-03-01"), ("March 1, 2025", "2025-03-01"), ("1st March 2025", "2025-03-01"),
    ("the 1st of March, 2025", "2025-03-01"), ("01.03.2025", "2025-03-01"), ("2025/03/01", "2025-03-01"),
    ("13/03/2025", "2025-03-13"), ("03/13/2025", "2025-03-13"), ("2025年3月1日", "2025-03-01"),
    ("31 January", "January 31st"), ("3月1日", "1 March"), ("March 2025", "2025年3月"),
    ("17:00", "5 pm"), ("5:30 p.m.", "17:30"),
    # identifiers and sections
    ("FIN-03", "form fin 03"), ("FIN-03", "fin-03"), ("FIN-03", "FIN 03"), ("FIN-03", "FIN03"),
    ("FIN-03", "FIN-3"), ("FIN-03", "FIN‑03"), ("IT-SEC-4", "it-sec-04"), ("Article 5", "Art. 5"),
    ("Article 5", "article 5"), ("Annex III", "annex 3"), ("Chapter II", "chapter 2"),
    ("Section 3.2", "section 3.2"), ("§ 4", "Section 4"), ("tier-3 systems", "tier 3"),
    # roles
    ("human resources", "HR"), ("finance department", "finance team"), ("data protection officer", "DPO"),
    ("IT service desk", "IT helpdesk"), ("chief financial officer", "CFO"),
    ("head of department", "department head"), ("line manager", "your Line Manager"),
    # counts
    ("3 references", "three references"), ("3 written quotes", "3 quotes"), ("500 past cases", "500 cases"),
]


@pytest.mark.parametrize("a,b", EQUIVALENT)
def test_equivalent_forms_are_one_fact(a, b):
    ka, kb = keys(a), keys(b)
    assert len(ka) == 1 and ka == kb, (triples(a), triples(b))
    for answer, ref in ((a, b), (b, a)):
        s = fact_scores(answer, ref)
        assert (s["fact_recall"], s["all_facts"], s["contradiction"]) == (1.0, 1.0, 0.0)


DIFFERENT = [
    ("10 days", "10 working days"), ("25 EUR", "25 USD"), ("FIN-03", "FIN-04"), ("FIN-03", "HR-03"),
    ("Article 5", "Section 5"), ("1 March 2025", "1 March 2024"), ("15%", "15 EUR"),
    ("3 references", "3 quotes"), ("6 weeks", "42 days"), ("line manager", "HR"), ("17:00", "7 pm"),
]


@pytest.mark.parametrize("a,b", DIFFERENT)
def test_different_facts_do_not_match(a, b):
    assert keys(a) and keys(b) and keys(a) != keys(b)
    assert fact_scores(a, b)["fact_recall"] == 0.0
    assert fact_scores(b, a)["fact_recall"] == 0.0


@pytest.mark.parametrize("text,expected", [
    ("1,200", 1200.0), ("25,000", 25000.0), ("1.200.000", 1200000.0), ("12.5", 12.5), ("1.200", 1.2),
    ("12,5", 12.5), ("1,200.50", 1200.5), ("1.200,50", 1200.5), ("007", 7.0),
    ("1,2345", None), ("1.1.1", None), ("1,20,000", None), ("1" * 40, None),
])
def test_number_forms(text, expected):
    assert F._parse_number(text) == expected


# --------------------------------------------------------------------------- extraction

@pytest.mark.parametrize("text,expected", [
    (("Yes: claims go in on form FIN-03 within 30 calendar days of the expense or of your return, and "
     "anything older than 90 days is refused unless the CFO makes an exception."),
     [("id", "FIN-03", None), ("duration", 30.0, "day"), ("duration", 90.0, "day"), ("role", "cfo", None)]),
    (("Purchases in the 2,500 to 25,000 EUR band need 3 written quotes and the approval of your Head of "
     "Department."),
     [("money", 2500.0, "EUR"), ("money", 25000.0, "EUR"), ("number", 3.0, "quote"),
      ("role", "head_of_department", None)]),
    ("Full-time staff with 3 to 5 completed years of service get 27 working days of annual leave.",
     [("duration", 3.0, "year"), ("duration", 5.0, "year"), ("duration", 27.0, "working_day")]),
    ("Up to 5 days can be carried over, but they lapse if not used by 31 March.",
     [("duration", 5.0, "day"), ("date", "--03-31", "md")]),
    (("For at most 20 working days a calendar year, and only with the Head of People's prior approval "
     "through annex B of form HR-17."),
     [("duration", 20.0, "working_day"), ("role", "head_of_people", None), ("section", "B", "annex"),
      ("id", "HR-17", None)]),
    (("A drop of more than 5 percentage points against the validated baseline triggers a suspension "
     "review within 48 hours."), [("percent", 5.0, None), ("duration", 48.0, "hour")]),
    (("Tell the Data Protection Officer within 4 hours; where required, the DPO informs the supervisory "
     "authority within 72 hours."),
     [("role", "dpo", None), ("duration", 4.0, "hour"), ("role", "supervisory_authority", None),
      ("duration", 72.0, "hour")]),
    ("Contracts between 25,000 and 140,000 EUR need a tender.",
     [("money", 25000.0, "EUR"), ("money", 140000.0, "EUR")]),
    ("See Articles 5 and 6 and Section 3.2.1 of Annex IV.",
     [("section", 5, "article"), ("section", 6, "article"), ("section", "3.2.1", "section"),
      ("section", 4, "annex")]),
    ("The office closes at 17:00 on 24 December 2025.",
     [("time", "17:00", None), ("date", "2025-12-24", "ymd")]),
    ("The deadline moved in 2024.", [("date", "2024", "y")]),
])
def test_extract_known_fact_lists(text, expected):
    assert triples(text) == expected


@pytest.mark.parametrize("text,expected", [
    # list markers, at the start of a line or chained, are not facts
    ("1. Submit the form.\n2. Wait for approval.\n3) Done.", []),
    ("1. 1. 1. 2. 3. 4. 5. 6. 7. 8. 9. 10. 11. 12.", []),
    ("- 1. first\n* 2. second", []),
    ("(a) the claimant; (3) the panel", []),
    ("1. 1.1.1.1.1.1.1.1.1.1.1.1.1.1.1", []),
    # the parts of a date, an id or a section are not numbers of their own
    ("on 2025-03-01", [("date", "2025-03-01", "ymd")]),
    ("by 1 March 2025", [("date", "2025-03-01", "ymd")]),
    ("Article 5 applies", [("section", 5, "article")]),
    ("use form FIN-03", [("id", "FIN-03", None)]),
    ("under HR-17", [("id", "HR-17", None)]),  # HR inside an id is not the role
    ("Section 3.2", [("section", "3.2", "section")]),
    # other non-facts
    ("I don't know.", []), ("24/7 support", []), ("a one-off grant", []), ("split in two and",
                                                                         []),
    ("it takes a week", []), ("covid19 rules", []), ("one of them", []),
    ("the 01/03/2025 meeting", []),  # ambiguous day/month: dropped, and not three numbers either
    ("The answer to this question is: 4.", [("number", 4.0, None)]),
    ("between 10 and 15", [("number", 10.0, None), ("number", 15.0, None)]),
])
def test_false_facts_are_not_read(text, expected):
    assert triples(text) == expected


def test_facts_are_deduplicated_in_order_and_keep_surface_text():
    fs = extract_facts("Pay €25 now, then 25 EUR later, within ten working days (10 working days).")
    assert [(f.kind, f.value, f.unit, f.text) for f in fs] == [
        ("money", 25.0, "EUR", "€25"), ("duration", 10.0, "working_day", "ten working days")]


def test_surface_text_is_the_original_even_when_normalisation_changes_lengths():
    # "ﬁ" (one character) normalises to "fi" (two), "İ" lower-cases to two characters
    fs = extract_facts("The ﬁnal İstanbul cap is ３０％ and ＥＵＲ １２")
    assert [(f.kind, f.value, f.unit, f.text) for f in fs] == [
        ("percent", 30.0, None, "３０％"), ("money", 12.0, "EUR", "ＥＵＲ １２")]


def test_fact_slot_and_key():
    f = extract_facts("form FIN-03")[0]
    assert f == Fact("id", "FIN-03", None, "FIN-03")
    assert f.slot() == ("id", None) and f.key() == ("id", None, "FIN-3")
    g = extract_facts("145 EUR")[0]
    assert g.slot() == ("money", "EUR") and g.key() == ("money", "EUR", 145.0)


# --------------------------------------------------------------------------- scores

HOTEL = "The hotel cap is 145 EUR per night."


@pytest.mark.parametrize("answer,recall,contradiction,contradicted", [
    ("The total cost is 2,000 euros.", 0.0, 1.0, ["2,000 euros"]),
    ("Up to EUR 145 a night.", 1.0, 0.0, []),
    ("I don't know.", 0.0, 0.0, []),
    ("145 EUR a night, so 2,000 EUR in total for the fortnight.", 1.0, 0.0, []),  # reference value stated
    ("The cap is 145.", 1.0, 0.0, []),           # bare number: lenient on the unit...
    ("The cap is 200.", 0.0, 0.0, []),           # ...but bare numbers never contradict
    ("The cap is 145 USD.", 0.0, 0.0, []),       # another currency: another slot
    ("You may stay 10 days.", 0.0, 0.0, []),     # another unit: not a contradiction
])
def test_hotel_cap(answer, recall, contradiction, contradicted):
    s = fact_scores(answer, HOTEL)
    assert (s["fact_recall"], s["contradiction"], s["contradicted"]) == (recall, contradiction, contradicted)


@pytest.mark.parametrize("reference,answer,contradiction", [
    ("Invoices are paid within 30 days.", "Invoices are paid within 10 days.", 1.0),
    ("within 10 working days", "within 15 working days", 1.0),
    ("within 10 working days", "within 10 days", 0.0),  # plain days are not working days
    ("reduced by 30%", "reduced by 50%", 1.0),
    ("by 31 March", "by 30 April", 1.0),
    ("by 31 March", "by 31 March 2026", 0.0),
    ("every year by 31 January", "due on January 1st, 2023", 1.0),  # a full date fills the day-month slot
    ("needs 3 written quotes", "needs 2 quotes", 1.0),
    ("needs 3 written quotes", "needs 2 references", 0.0),
    ("on form FIN-03", "on form FIN-04", 0.0),  # ids, sections and roles never contradict
    ("approved by the CFO", "approved by HR", 0.0),
    # several reference values in one slot: a contradiction only when none of them is stated
    ("6,000 EUR a month, no single payment above 2,000 EUR", "6,000 EUR a month, payments up to 5,000 EUR", 0.0),
    ("6,000 EUR a month, no single payment above 2,000 EUR", "100,000 EUR a month", 1.0),
])
def test_contradiction(reference, answer, contradiction):
    assert fact_scores(answer, reference)["contradiction"] == contradiction


def test_working_days_answer_is_not_stated_by_plain_days():
    s = fact_scores("within 10 days", "within 10 working days")
    assert s["fact_recall"] == 0.0 and s["missing"] == ["10 working days"]


def test_bare_reference_number_is_stated_by_a_quantity():
    assert fact_scores("It costs 4 EUR.", "The answer is: 4.")["fact_recall"] == 1.0


def test_full_date_in_reference_needs_the_year():
    assert fact_scores("by 31 January", "by 2025-01-31")["fact_recall"] == 0.0
    assert fact_scores("by 2025-01-31", "by 31 January")["fact_recall"] == 1.0


REF3 = "Submit form HR-11 at least 10 working days ahead; your line manager approves it."


def test_all_facts_and_ordering():
    full = fact_scores("Use HR-11, ten working days ahead, approved by your line manager.", REF3)
    two = fact_scores("Use form HR 11 at least 10 business days before.", REF3)
    none = fact_scores("Just ask someone.", REF3)
    assert full["n_ref_facts"] == 3
    assert (full["fact_recall"], full["all_facts"]) == (1.0, 1.0)
    assert two["fact_recall"] == pytest.approx(2 / 3) and two["all_facts"] == 0.0
    assert two["missing"] == ["line manager"]
    assert (none["fact_recall"], none["all_facts"], none["n_matched"]) == (0.0, 0.0, 0)
    assert full["fact_recall"] > two["fact_recall"] > none["fact_recall"]


@pytest.mark.parametrize("reference", ["Yes, you can.", "", "Talk to someone about it."])
def test_reference_without_facts(reference):
    s = fact_scores("It is 25 EUR within 3 days.", reference)
    assert s == {"fact_recall": None, "all_facts": None, "contradiction": 0.0, "n_ref_facts": 0,
                 "n_matched": 0, "missing": [], "contradicted": []}


def test_output_shape():
    s = fact_scores("The total is 2,000 euros within 5 days.", "145 EUR a night, claim within 30 days.")
    assert list(s) == ["fact_recall", "all_facts", "contradiction", "n_ref_facts", "n_matched",
                       "missing", "contradicted"]
    assert s == {"fact_recall": 0.0, "all_facts": 0.0, "contradiction": 1.0, "n_ref_facts": 2,
                 "n_matched": 0, "missing": ["145 EUR", "30 days"],
                 "contradicted": ["2,000 euros", "5 days"]}
    assert isinstance(s["n_ref_facts"], int) and isinstance(s["n_matched"], int)


@pytest.mark.parametrize("answer,reference", [
    ("十五日以内に提出してください", "Submit within 15 days."),
    ("報告は３０％です", "It is 30%."),
    ("خلال ٣ أيام", "within 3 days"),
    ("within ١٠ working days", "within ten working days"),
])
def test_non_latin_answers(answer, reference):
    assert fact_scores(answer, reference)["fact_recall"] == 1.0


# --------------------------------------------------------------------------- the sample FAQ

def faq_references() -> list[str]:
    with FAQ.open(encoding="utf-8") as fh:
        return [json.loads(line)["answer"] for line in fh if line.strip()]


def test_sample_faq_references_have_facts():
    refs = faq_references()
    counts = [len(extract_facts(r)) for r in refs]
    assert len(refs) == 30
    assert sum(c >= 1 for c in counts) >= 25
    assert sum(counts) / len(counts) >= 2.0
    for r in refs:  # every reference matches itself completely, with no contradiction
        s = fact_scores(r, r)
        assert s["fact_recall"] in (None, 1.0) and s["contradiction"] == 0.0


@pytest.mark.parametrize("start,expected", [
    ("The hotel limit in Lyon", [("money", 145.0, "EUR")]),
    ("75 EUR per day", [("money", 75.0, "EUR"), ("percent", 30.0, None)]),
    ("A travel card can spend", [("money", 6000.0, "EUR"), ("money", 2000.0, "EUR")]),
    ("Local validation on at least", [("number", 500.0, "case"), ("number", 2.0, "site"),
                                      ("duration", 90.0, "day")]),
    ("On form HR-22", [("id", "HR-22", None), ("date", "--01-31", "md"), ("duration", 10.0, "working_day")]),
    ("The Chief Data Steward approves", [("role", "data_steward", None), ("section", 3, "tier"),
                                         ("duration", 6.0, "month")]),
])
def test_sample_faq_spot_checks(start, expected):
    (ref,) = [r for r in faq_references() if r.startswith(start)]
    assert triples(ref) == expected


MESSY_ANSWERS = [
    ("The hotel in Lyon, Le Coeur de la France, is a luxury hotel. The total cost of the room is "
    "approximately €120. The room is available for a maximum of 2 nights."),
    "1. **Bills**: 10% of all expenses are bills.\n2. **Bills**: 10% of all expenses are bills.\n3. **Bi",
    "1. 1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1",
    "1. 1. 1. 2. 3. 4. 5. 6. 7. 8. 9. 10. 11. 12. 13. 14. 15. 16. 17. 18. 19. 20.",
    "Corvale pays its suppliers in 12 hours, 15 minutes, and 20 seconds.",
    "The patient's email address is:\n\nThe patient's email address is:\n\n" * 5,
]


@pytest.mark.parametrize("answer", MESSY_ANSWERS)
def test_messy_model_answers(answer):
    for ref in faq_references():
        s = fact_scores(answer, ref)
        assert s["fact_recall"] is None or 0.0 <= s["fact_recall"] <= 1.0


def test_messy_answer_facts():
    assert triples(MESSY_ANSWERS[0]) == [("money", 120.0, "EUR"), ("duration", 2.0, "night")]
    assert triples(MESSY_ANSWERS[1]) == [("percent", 10.0, None)]
    assert triples(MESSY_ANSWERS[2]) == triples(MESSY_ANSWERS[3]) == []


# --------------------------------------------------------------------------- robustness

def random_text(size: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    vocab = ["the", "within", "30", "days", "EUR", "€", "25", "Article", "5", "FIN-03", "HR", "1.",
             "2025-03-01", "March", "1st", "twenty-five", "working", "十五日", "３０％", "٣", "$1,200",
             "\n", "(a)", "17:00", "per", "cent", "1,200.50", "1.2.3", "tier-3", "-", "/", "ﬁ", "İ",
             "二十五", "k", "million", "line", "manager", "Annex", "III"]
    alphabet = string.ascii_letters + string.digits + ".,-/:%€$"
    parts, n = [], 0
    while n < size:
        r = rng.random()
        if r < 0.6:
            w = rng.choice(vocab)
        elif r < 0.8:
            w = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 8)))
        else:
            w = "".join(chr(rng.randint(0x20, 0x2FFFF)) for _ in range(rng.randint(1, 4)))
        parts.append(w)
        n += len(w) + 1
    return " ".join(parts)[:size]


PATHOLOGICAL = {
    "random_1mb": lambda: random_text(1_000_000),
    "ones": lambda: "1" * 100_000,
    "euros": lambda: "€" * 50_000,
    "articles": lambda: "Article " * 20_000,
    "number_words": lambda: "twenty " * 10_000,
    "markers": lambda: "1. " * 20_000,
    "dots": lambda: "1." * 50_000,
    "hyphens": lambda: "a-" * 20_000,
    "ids": lambda: "FIN-" * 10_000,
    "cjk": lambda: "十日" * 10_000,
    "spaces": lambda: "EUR" + " " * 100_000 + "25",
    "ranges": lambda: "3 to " * 10_000,
    "lists": lambda: "Articles 5, " * 5_000,
    "ligatures": lambda: "ﬁ" * 50_000 + " 25 EUR",
}


@pytest.mark.parametrize("name", list(PATHOLOGICAL))
def test_pathological_inputs_are_fast(name):
    text = PATHOLOGICAL[name]()
    start = time.process_time()  # CPU time: other jobs on the machine do not count
    s = fact_scores(text, HOTEL)
    assert time.process_time() - start < 10.0  # linear: a quadratic scan of 1 MB takes hours; 2 s flaked on CI (2.2 s)
    assert s["n_ref_facts"] == 1
    start = time.process_time()
    fact_scores(HOTEL, text[:20_000])  # and as the reference
    assert time.process_time() - start < 10.0  # linear: a quadratic scan of 1 MB takes hours; 2 s flaked on CI (2.2 s)


def test_long_surface_text_is_capped():
    f = extract_facts("EUR" + " " * 10_000 + "25")[0]
    assert f.value == 25.0 and f.text == "EUR 25"


@pytest.mark.parametrize("value", [None, 42, b"25 EUR", ["25 EUR"]])
def test_non_text_input(value):
    assert isinstance(extract_facts(value), list)
    assert fact_scores(value, value)["n_ref_facts"] >= 0


TOKENS = st.sampled_from(["1", "25", "2025", "-", "/", ".", ",", ":", " ", "\n", "EUR", "€", "$", "%",
                          "Article", "Art", "annex", "III", "FIN", "form", "days", "working", "st",
                          "March", "May", "of", "to", "and", "ten", "twenty", "hundred", "十", "五",
                          "日", "年", "月", "元", "٣", "１", "am", "p", "m", "k", "(", ")", "HR", "line",
                          "manager", "ﬁ", "İ", "\u0301", "\x00"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=200), st.lists(TOKENS, max_size=40).map("".join),
                 st.lists(TOKENS, max_size=40).map(" ".join)))
def test_scanner_never_raises(text):
    facts = F._Scanner(text).run()  # without the safety net of extract_facts
    for f in facts:
        assert f.kind in {"money", "duration", "percent", "date", "time", "id", "section", "role", "number"}
        assert isinstance(f.text, str) and f.text
    s = fact_scores(text, text)
    assert s["contradiction"] == 0.0 and s["fact_recall"] in (None, 1.0)
