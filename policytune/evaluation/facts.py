"""Fact-level correctness: which of a reference answer's key facts a model answer states.

A policy answer is mostly right or wrong on a handful of facts: an amount, a deadline, a
percentage, a form code, who approves. ``extract_facts`` pulls those facts out of a text as
normalised :class:`Fact` values; ``fact_scores`` extracts them from the reference and from the
answer and compares them. Nothing here loads a model; both functions are total (any text in,
never an exception) and take time linear in the length of the text.

Normalisation (what counts as the same fact)
--------------------------------------------
Text is first normalised character by character: NFKC (full-width ``１２`` -> ``12``, ``％`` ->
``%``), lower case, every Unicode decimal digit to ASCII (Arabic-Indic ``٣`` -> ``3``,
Devanagari, ...), every dash to ``-``. Each fact keeps the original surface ``text`` it came
from (white space collapsed, at most 80 characters).

- **money** ``(amount, ISO code)``: a currency code, symbol or word before or after the number:
  ``25 EUR`` = ``EUR 25`` = ``€25`` = ``25 euros`` = ``25.00 EUR``; ``$1,200`` = ``1200 USD`` =
  ``1,200 dollars``; ``£`` is GBP, ``¥`` and ``円`` JPY, ``元`` CNY. ``25k``, ``€1.2m`` and
  ``1.2 million`` are multiplied out. A rate ("a night", "per day") is not part of the fact.
- **duration** ``(number, unit)``: units ``day``, ``working_day`` (working / business days,
  weekdays, ``工作日``), ``week``, ``month``, ``year``, ``hour``, ``minute``, ``second``,
  ``night``. "Calendar days" are ``day``; plain days and working days are different units; no
  conversion between units (6 weeks is not 42 days). Modifiers may stand between number and
  unit ("30 calendar days", "5 completed years"); ``24-hour`` = ``24 hours``; ``十五日`` =
  ``15 days``.
- **percent**: ``15%`` = ``15 percent`` = ``15 per cent`` = ``３０％``; percentage points are
  read as percent.
- **number** ``(number, noun)``: a count with its noun, lower-cased and singularised
  ("3 written quotes" -> ``quote``); a number with no recognisable noun is a *bare* number
  (unit ``None``).
- In a range the first number takes the second one's unit: "2,500 to 25,000 EUR", "between
  25,000 and 140,000 EUR", "3 to 5 years", "10-15 days".
- Number forms: ``1,200`` and ``1.200.000`` are thousands; a single ``.`` is a decimal point
  (``12.5``; so the ambiguous ``1.200`` is 1.2); a single ``,`` before one or two digits is a
  decimal comma (``12,5`` = 12.5), before three digits a thousands separator; ``1,200.50`` and
  ``1.200,50`` are both 1200.5; other groupings (``1,2345``, ``1.1.1``) are not numbers. Spaces
  group digits only right before a currency (``1 200 EUR`` is 1200 EUR; ``1 200 people`` is two
  numbers). Ordinals (``5th``) read as their number. Number words ``zero`` .. ``nineteen``,
  tens, ``hundred``, ``thousand``, ``million`` ("twenty-five" = 25, "one hundred and fifty" =
  150) count only before a unit or, from two up, a noun ("ten working days", "three
  references"; "split in two" and "one-off" are not facts); "a week" is not read as 1 week.
  CJK numerals (``十`` 10, ``十五`` 15, ``二十五`` 25, ``百`` 100) count only before a unit.
- **date**: ``1 March 2025`` = ``March 1, 2025`` = ``1st of March 2025`` = ``2025-03-01`` =
  ``2025/03/01`` = ``01.03.2025`` (dotted dates are day first) = ``2025年3月1日``: value
  ``"2025-03-01"``, unit ``ymd``. Slash forms ``a/b/yyyy`` (or ``a/b/yy``, read 20yy) and hyphen
  forms ``a-b-yyyy`` are read day first when ``a > 12``, month first when ``b > 12``, and are
  dropped (no fact at all) when both are at most 12 and differ, as in ``01/03/2025``. A day and
  month without a year ("31 January", ``3月1日``) is unit ``md``, value ``"--01-31"``; "March
  2025" is ``ym`` (``"2025-03"``); a year after "in", "by", "since", "until", ... is ``y``.
  "may" and month abbreviations count as months only when capitalised.
- **time**: ``17:00``, ``5 pm``, ``5 p.m.`` -> ``"17:00"``.
- **id**: form and policy codes, letters then digits: ``FIN-03`` = ``fin-03`` = ``FIN 03`` =
  ``form fin 03`` = ``FIN03`` = ``FIN-3`` (compared upper-case, the numeric part as an
  integer); multi-part ``IT-SEC-4``. Without a hyphen the letters must be upper-case (or follow
  "form", "policy", "procedure", ...) and the number must not carry a unit; a currency code is
  never an id.
- **section** ``(number, kind)``: ``Article 5`` = ``Art. 5``; ``Section 3.2``, ``§ 4``;
  ``Articles 5 and 6`` is two facts. Kinds: article, section, annex, appendix, chapter, part,
  paragraph, clause, schedule, tier, level, module, step, phase, stage. Upper-case roman
  numerals become integers (``Annex III`` = ``annex 3``; of the single letters only I, V and X
  are read as roman), other letters stay letters (``annex B``).
- **role**: a closed list (``ROLES``): "human resources" = ``hr``, "data protection officer" =
  ``dpo``, "finance team" = "finance department" = ``finance_department``, "IT helpdesk" =
  ``it_service_desk``, "chief financial officer" = ``cfo``, ... A role is a key fact only
  when the reference names it.
- The number of a date, time, id or section is never also a number of its own. Not facts:
  list markers (``1.``, ``2)`` at the start of a line or right after another marker, ``(3)``),
  numbers glued to the end of a lower-case word (``covid19``, ``mp3``), ratios (``24/7``).

Metrics (``fact_scores(answer, reference)``)
--------------------------------------------
The reference's *key facts* are ``extract_facts(reference)`` (de-duplicated). The answer
*states* a key fact when one of the answer's facts has the same kind, unit and value (numbers
compared after rounding to 10 significant digits), with three leniencies:

1. a bare number in the answer states a reference quantity (money, duration, percent, count)
   of the same value ("145" states "145 EUR": lenient on a missing unit, strict on the
   value); a *different* unit ("145 USD", "145 days") never states it;
2. a bare number in the reference is stated by any answer quantity of the same value;
3. a full date in the answer states the reference's day-month, month or year it contains
   ("31 January 2026" states "31 January"; "31 January" does not state "2026-01-31").

- ``fact_recall`` = stated key facts / key facts; ``None`` when the reference has none.
- ``all_facts`` = 1.0 when every key fact is stated, else 0.0; ``None`` when there are none.
- ``contradiction`` = 1.0 when, for some *slot* the reference fills (kind and unit: money in
  one currency, duration in one unit, percent, a date of one precision, a time, a count of
  one noun; never ids, sections, roles or bare numbers), the answer states a value the
  reference does not give for that slot *and* states none of the values the reference gives
  for it (a full date in the answer also fills the day-month, month and year slots). So
  reference "145 EUR" vs answer "2,000 euros" is a contradiction; vs "145 EUR, so 2,000 EUR in
  total" it is not (the reference value is there); vs "10 days", "2,000 USD" or a bare "200"
  it is not (another slot, or no unit). With several reference values in one slot ("6,000 EUR
  a month, no payment above 2,000 EUR") an answer naming one of them is not a contradiction,
  whatever else it says. 0.0 otherwise, including when the reference has no key fact.
- ``n_ref_facts``, ``n_matched`` (stated key facts); ``missing``: surface texts of the key
  facts not stated; ``contradicted``: surface texts of the answer facts that contradict, in
  the answer's order.
"""

from __future__ import annotations

import operator
import re
import unicodedata
from dataclasses import dataclass
from datetime import date

__all__ = ["ROLES", "Fact", "extract_facts", "fact_scores"]


@dataclass(frozen=True)
class Fact:
    """One normalised fact. ``text`` is the original surface form (for reports)."""
    kind: str            # "money" | "duration" | "percent" | "date" | "time" | "id" | "section" | "role" | "number"
    value: object        # float for quantities, str for dates/times/ids/roles, int or str for sections
    unit: str | None     # currency code, duration unit, noun, date precision, section kind, None
    text: str

    def slot(self) -> tuple:
        """The comparable slot (kind, unit): two facts in one slot with different values disagree."""
        return (self.kind, self.unit)

    def key(self) -> tuple:
        """Identity used for matching and de-duplication: slot plus the canonical value."""
        return (self.kind, self.unit, _canon(self.kind, self.value))


QUANTITY_KINDS = frozenset({"money", "duration", "percent", "number"})
CONTRADICTION_KINDS = frozenset({"money", "duration", "percent", "number", "date", "time"})
_MAX_TEXT = 80  # surface text kept per fact
_PAD = 12  # sentinel tokens after the last one (the longest look-ahead is 6)


def _canon(kind: str, value: object) -> object:
    if isinstance(value, float):
        return float(f"{value:.10g}")
    if kind == "id" and isinstance(value, str):
        head, _, digits = value.rpartition("-")
        return f"{head}-{int(digits)}" if digits.isdigit() else value
    return value


# --------------------------------------------------------------------------- normalisation

_SPECIAL = {"\u2212": "-", "\u2019": "'", "\u2018": "'", "\u02bc": "'", "\u066b": ".",
            "\u066c": ",", "\u066a": "%", "\u060c": ","}


def _translate(c: str) -> str:
    if c in _SPECIAL:
        return _SPECIAL[c]
    if c.isspace():
        return "\n" if c in "\u2028\u2029\x85" else " "
    d = unicodedata.decimal(c, None)
    if d is not None:
        return str(d)
    cat = unicodedata.category(c)
    if cat == "Pd":
        return "-"
    if cat == "No" or cat[0] == "C":  # superscripts, fractions, circled digits, controls: kept
        return c
    r = unicodedata.normalize("NFKC", c).lower()
    return r if 0 < len(r) <= 4 else c


class _CharTable(dict):
    """``str.translate`` table: code point -> normalised lower-case piece, filled on first use."""

    def __missing__(self, code: int) -> str:
        r = _translate(chr(code))
        self[code] = r
        return r


def _ascii_table() -> _CharTable:
    table = _CharTable({c: chr(c).lower() for c in range(128)})
    table.update({ord("\r"): "\n", 0x0B: "\n", 0x0C: "\n"})
    return table


_TABLE = _ascii_table()
_NON_ASCII = re.compile(r"[^\x00-\x7f]+")


def _normalise(text: str) -> tuple[str, range | list[int]]:
    """Normalised text and, for each of its characters, the index of the original character."""
    global _TABLE
    if len(_TABLE) > 200_000:  # bound the cache
        _TABLE = _ascii_table()
    table = _TABLE
    norm = text.translate(table)
    if len(norm) == len(text):  # every character became exactly one (pieces are never empty)
        return norm, range(len(text))
    omap: list[int] = []  # some character became several: map each piece back (ASCII is 1:1)
    pos = 0
    for m in _NON_ASCII.finditer(text):
        a, b = m.span()
        omap.extend(range(pos, a))
        run = m.group()
        if len(run.translate(table)) == b - a:
            omap.extend(range(a, b))
        else:
            for k, c in enumerate(run, a):
                omap.extend([k] * len(table[ord(c)]))
        pos = b
    omap.extend(range(pos, len(text)))
    return norm, omap


# --------------------------------------------------------------------------- tokens

_NUM, _CJKNUM, _CJK, _WORD, _SYM = 1, 2, 3, 4, 5
_LASTINDEX = operator.attrgetter("lastindex")
_CJK_RANGE = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_CJK_DIGITS = {"〇": 0, "零": 0, "一": 1, "二": 2, "两": 2, "三": 3, "四": 4, "五": 5, "六": 6,
               "七": 7, "八": 8, "九": 9}
_CJK_MULT = {"十": 10, "百": 100, "千": 1000}
_TOKEN = re.compile(
    r"([0-9]+(?:[.,][0-9]+)*)"                          # number (separators inside)
    r"|([〇零一二两三四五六七八九十百千万]+)"              # CJK numeral run
    rf"|([{_CJK_RANGE}])"                               # any other CJK character, one a token
    rf"|([^\W\d_{_CJK_RANGE}]+)"                        # word
    r"|(\S)")                                           # any other visible character


def _tokenise(norm: str) -> tuple[list[int], list[str], list[int], list[int]]:
    """Token kinds, texts, start and end offsets (parallel lists)."""
    ms = list(_TOKEN.finditer(norm))
    return (list(map(_LASTINDEX, ms)), list(map(re.Match.group, ms)), list(map(re.Match.start, ms)),
            list(map(re.Match.end, ms)))


def _cjk_value(run: str) -> int | None:
    """Value of a CJK numeral run (``二十五`` 25, ``三百`` 300, ``二〇二五`` 2025); None if too long."""
    if len(run) > 10:
        return None
    if len(run) > 1 and all(c in _CJK_DIGITS for c in run):
        return int("".join(str(_CJK_DIGITS[c]) for c in run))
    total = section = num = 0
    for c in run:
        if c in _CJK_DIGITS:
            num = _CJK_DIGITS[c]
        elif c in _CJK_MULT:
            section += (num or 1) * _CJK_MULT[c]
            num = 0
        else:  # 万
            total += (section + num or 1) * 10000
            section = num = 0
    return total + section + num


def _parse_number(raw: str) -> float | None:
    """Numeric value of a digit token with ``.``/``,`` separators (rules in the module docstring)."""
    if len(raw) > 30:
        return None
    if raw.isdigit():
        return float(int(raw))
    pieces = re.split(r"([.,])", raw)
    nums, seps = pieces[0::2], pieces[1::2]
    if len(seps) == 1:
        a, b = nums
        if seps[0] == ".":
            return float(f"{a}.{b}")
        if len(b) == 3 and len(a) <= 3:
            return float(a + b)
        return float(f"{a}.{b}") if len(b) <= 2 else None
    first, last = seps[0], seps[-1]
    if any(s != first for s in seps[:-1]):
        return None
    groups, frac = (nums, "0") if last == first else (nums[:-1], nums[-1])
    if not 1 <= len(groups[0]) <= 3 or any(len(g) != 3 for g in groups[1:]):
        return None
    return float(f"{''.join(groups)}.{frac}")


# --------------------------------------------------------------------------- vocabularies

def _words(s: str, ordered: bool = False):
    """The whitespace-separated words of s, as a frozenset (or, ordered, a tuple)."""
    words = tuple(s.split())
    return words if ordered else frozenset(words)


_CURRENCY_CODES = {c: c.upper() for c in (
    "eur", "usd", "gbp", "chf", "jpy", "cny", "inr", "cad", "aud", "nzd", "sek", "nok", "dkk",
    "pln", "czk", "huf", "ron", "brl", "mxn", "zar", "sgd", "hkd", "krw")} | {"rmb": "CNY"}
_CURRENCY_SYMBOLS = {"€": "EUR", "$": "USD", "£": "GBP", "¥": "JPY", "₹": "INR", "₩": "KRW",
                     "元": "CNY", "円": "JPY"}
_CURRENCY_PREFIX = {**_CURRENCY_CODES, **_CURRENCY_SYMBOLS}


def _unit_table() -> dict[tuple[str, ...], tuple[str, str | None]]:
    t: dict[tuple[str, ...], tuple[str, str | None]] = {}
    money = {**_CURRENCY_PREFIX, "euro": "EUR", "euros": "EUR", "dollar": "USD", "dollars": "USD",
             "pound": "GBP", "pounds": "GBP", "franc": "CHF", "francs": "CHF", "yen": "JPY",
             "yuan": "CNY", "renminbi": "CNY", "rupee": "INR", "rupees": "INR", "يورو": "EUR",
             "دولار": "USD"}
    t.update({(w,): ("money", c) for w, c in money.items()})
    for a, b, c in (("us", "dollar", "USD"), ("us", "dollars", "USD"), ("pound", "sterling", "GBP"),
                    ("pounds", "sterling", "GBP"), ("swiss", "franc", "CHF"), ("swiss", "francs", "CHF")):
        t[(a, b)] = ("money", c)
    for p in (("%",), ("percent",), ("pct",), ("pp",), ("per", "cent"), ("percentage", "point"),
              ("percentage", "points"), ("percent", "points")):
        t[p] = ("percent", None)
    durations = {
        "day": "day days 日 天 يوم يوما أيام ايام", "working_day": "workday workdays weekday weekdays",
        "week": "week weeks wk wks 周 週 أسبوع أسابيع", "month": "month months شهر أشهر شهور",
        "year": "year years yr yrs 年 سنة سنوات", "hour": "hour hours hr hrs h ساعة ساعات",
        "minute": "minute minutes min mins", "second": "second seconds sec secs 秒",
        "night": "night nights"}
    for unit, words in durations.items():
        t.update({(w,): ("duration", unit) for w in words.split()})
    for a in ("working", "business", "work"):
        t[(a, "day")] = t[(a, "days")] = ("duration", "working_day")
    t[("working", "week")] = t[("working", "weeks")] = ("duration", "week")
    for phrase, unit in (("工作日", "working_day"), ("営業日", "working_day"), ("个月", "month"),
                         ("個月", "month"), ("ヶ月", "month"), ("か月", "month"), ("カ月", "month"),
                         ("小时", "hour"), ("小時", "hour"), ("時間", "hour"), ("分钟", "minute"),
                         ("分鐘", "minute"), ("星期", "week")):
        t[tuple(phrase)] = ("duration", unit)
    return t


_UNITS = _unit_table()
_UNIT_FIRST = {k[0] for k in _UNITS}
_ADJACENT_ONLY_UNITS = {"h", "pp"}
_DURATION_MODIFIERS = {"calendar", "full", "complete", "completed", "consecutive", "clear", "whole",
                       "additional", "extra", "more", "further", "paid", "unpaid", "straight",
                       "continuous", "successive"}
_ORDINAL = {"st", "nd", "rd", "th"}
_MULTIPLIERS = {"thousand": 1e3, "million": 1e6, "mn": 1e6, "mio": 1e6, "billion": 1e9, "bn": 1e9}
_STOP = _words("""to and or of in on at for from by with within without per a an the than less fewer
is are was were be been being can could must may might will would should shall if then that which
who whom whose after before each every over under up down not no nor as into out about around
between this these those there here it its they them we you he she i me my our your their his her
has have had do does did so but also only just plus via until till since during through while when
where why how what all any some such same both either neither yet still even too very vs versus
ago later earlier away off back again once twice am pm et get gets got need needs""")
_ADJECTIVES = {"more", "additional", "extra", "further", "new", "past", "previous", "other",
               "different", "separate", "written", "signed", "full", "complete", "completed",
               "consecutive", "independent", "valid", "formal", "official", "single", "individual",
               "external", "internal", "approved", "required", "recent", "last", "first", "next",
               "calendar", "given", "chosen", "taken", "main", "key", "major", "minor", "small",
               "large", "big", "old", "young", "senior", "junior", "local", "national", "free"}
_ADJ_SUFFIXES = ("ed", "al", "ive", "ful", "ous", "ic", "able", "ible")

_MONTHS = {m: i + 1 for i, m in enumerate(_words(
    "january february march april may june july august september october november december", ordered=True))}
_MONTH_ABBR = {"jan": 1, "feb": 2, "mar": 3, "apr": 4, "jun": 6, "jul": 7, "aug": 8, "sep": 9,
               "sept": 9, "oct": 10, "nov": 11, "dec": 12}
_CAPITAL_ONLY_MONTHS = set(_MONTH_ABBR) | {"may"}
_ALL_MONTHS = {**_MONTHS, **_MONTH_ABBR}
_YEAR_PREPS = {"in", "since", "until", "till", "by", "from", "before", "after", "of", "year", "during"}
_MONTH_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_NUMERIC_DATE_SEPS = {"-", "/"}
_CJK_DATE_MARKS = {"年", "月"}
_DAY_FIRST_NEXT = _ORDINAL | {"of"} | set(_ALL_MONTHS)
_TIME_NEXT = {":", "am", "pm", "a", "p"}

_SECTIONS = {"article": "article", "articles": "article", "art": "article", "section": "section",
             "sections": "section", "sec": "section", "§": "section", "annex": "annex",
             "annexes": "annex", "appendix": "appendix", "appendices": "appendix",
             "chapter": "chapter", "chapters": "chapter", "part": "part", "parts": "part",
             "paragraph": "paragraph", "paragraphs": "paragraph", "para": "paragraph",
             "clause": "clause", "clauses": "clause", "schedule": "schedule", "tier": "tier",
             "level": "level", "module": "module", "step": "step", "phase": "phase", "stage": "stage"}
_SECTION_ABBR = {"art", "sec", "para"}
_SECTION_LETTERS_ANY_CASE = {"annex", "appendix", "schedule"}
_SECTION_LIST_SEPS = {",", "and", "or", "to", "-", "&"}
_ROMAN = re.compile(r"m{0,3}(cm|cd|d?c{0,3})(xc|xl|l?x{0,3})(ix|iv|v?i{0,3})")
_ROMAN_VALUES = {"i": 1, "v": 5, "x": 10, "l": 50, "c": 100, "d": 500, "m": 1000}
_FORM_WORDS = {"form", "forms", "policy", "procedure", "document", "template", "code", "ref"}

_NUMBER_WORDS = {w: i for i, w in enumerate(_words(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen", ordered=True))}
_TENS = {w: 10 * (i + 2) for i, w in enumerate(_words(
    "twenty thirty forty fifty sixty seventy eighty ninety", ordered=True))}
_SCALES = {"hundred": 100, "thousand": 1000, "million": 1_000_000}
_ALL_NUMBER_WORDS = set(_NUMBER_WORDS) | set(_TENS) | set(_SCALES)

ROLES: dict[str, tuple[str, ...]] = {
    "hr": ("hr", "human resources", "hr department", "hr team", "human resources department",
           "personnel department"),
    "line_manager": ("line manager", "direct manager", "reporting manager", "your manager"),
    "finance_department": ("finance department", "finance team", "finance office"),
    "finance_controller": ("finance controller", "financial controller"),
    "dpo": ("data protection officer", "dpo"),
    "data_protection_team": ("data protection team",),
    "it_service_desk": ("it service desk", "it helpdesk", "it help desk", "service desk", "helpdesk",
                        "help desk"),
    "cfo": ("chief financial officer", "chief finance officer", "cfo", "finance director"),
    "ceo": ("chief executive officer", "ceo"),
    "ciso": ("chief information security officer", "ciso"),
    "compliance_officer": ("compliance officer",),
    "supervisor": ("supervisor",),
    "head_of_department": ("head of department", "department head"),
    "head_of_people": ("head of people",),
    "data_steward": ("chief data steward", "data steward"),
    "legal_department": ("legal department", "legal team"),
    "procurement": ("procurement department", "procurement team", "procurement review panel"),
    "supervisory_authority": ("supervisory authority", "data protection authority"),
}
_ROLE_PHRASES = {tuple(p.split()): role for role, ps in ROLES.items() for p in ps}
_ROLE_FIRST = {k[0] for k in _ROLE_PHRASES}
_WORD_TRIGGERS = set(_ALL_MONTHS) | set(_SECTIONS) | set(_CURRENCY_PREFIX) | _ALL_NUMBER_WORDS | _ROLE_FIRST


def _singular(w: str) -> str:
    if len(w) > 4 and w.endswith("ies"):
        return w[:-3] + "y"
    if w.endswith(("sses", "ches", "shes", "xes")):
        return w[:-2]
    if len(w) > 2 and w.endswith("s") and not w.endswith(("ss", "us", "is")):
        return w[:-1]
    return w


def _looks_plural(w: str) -> bool:
    return len(w) > 2 and w.endswith("s") and not w.endswith(("ss", "us", "is"))


def _iso(y: int, m: int, d: int) -> str | None:
    try:
        return date(y, m, d).isoformat() if 1000 <= y <= 2999 else None
    except ValueError:
        return None


def _month_day(m: int, d: int) -> str | None:
    return f"--{m:02d}-{d:02d}" if 1 <= m <= 12 and 1 <= d <= _MONTH_DAYS[m - 1] else None


def _roman(w: str) -> int | None:
    if not w or len(w) > 12 or not _ROMAN.fullmatch(w):
        return None
    vals = [_ROMAN_VALUES[c] for c in w]
    return sum(-v if k + 1 < len(vals) and v < vals[k + 1] else v for k, v in enumerate(vals))


# --------------------------------------------------------------------------- the scanner

class _Scanner:
    """One left-to-right pass over the tokens; each fact consumes the tokens it was read from."""

    def __init__(self, text: str) -> None:
        self.orig = text
        self.norm, self.omap = _normalise(text)
        self.K, self.X, self.S, self.E = _tokenise(self.norm)
        self.n = len(self.K)
        # padded at the end so that look-ahead (and index -1, -2) reads a sentinel: kind 0,
        # text "", positions that are never adjacent
        self.K += [0] * _PAD
        self.X += [""] * _PAD
        self.S += [-10] * _PAD
        self.E += [-20] * _PAD
        self.facts: list[Fact] = []
        self.seen: set[tuple] = set()
        self.marker_end = -2  # index of the "." / ")" of the last list marker

    # ---- helpers
    def run(self) -> list[Fact]:
        i, kinds = 0, self.K
        handlers = {_NUM: self._at_number, _WORD: self._at_word, _SYM: self._at_symbol,
                    _CJKNUM: self._at_cjk_number}
        while i < self.n:
            h = handlers.get(kinds[i])
            j = h(i) if h else None
            i = j if j and j > i else i + 1
        return self.facts

    def adjacent(self, k: int) -> bool:
        """Token k starts where token k-1 ends (never true at either end of the text)."""
        return self.E[k - 1] == self.S[k]

    def same_line(self, k: int) -> bool:
        """No line break between token k-1 and token k (false at either end of the text)."""
        return 0 < k < self.n and self.norm.find("\n", self.E[k - 1], self.S[k]) < 0

    def original(self, k: int) -> str:
        return self.orig[self.omap[self.S[k]]:self.omap[self.E[k] - 1] + 1]

    def surface(self, i: int, j: int) -> str:
        """Original text of tokens i..j-1, any run of white space between them shown as one space."""
        s = "".join((" " if k > i and not self.adjacent(k) else "") + self.original(k) for k in range(i, j))
        return s if len(s) <= _MAX_TEXT else s[:_MAX_TEXT - 1] + "…"

    def emit(self, kind: str, value: object, unit: str | None, i: int, j: int, text: str = "") -> int:
        """Record a fact read from tokens i..j-1 (first occurrence only) and return j."""
        key = (kind, unit, _canon(kind, value))
        if key not in self.seen:
            self.seen.add(key)
            self.facts.append(Fact(kind, value, unit, text or self.surface(i, j)))
        return j

    def phrase(self, j: int, table: dict, first: set, maxlen: int = 3):
        """Longest phrase of tokens j.. found in table: (value, end) or None."""
        if self.X[j] not in first:
            return None
        for length in range(min(maxlen, self.n - j), 0, -1):
            v = table.get(tuple(self.X[j:j + length]))
            if v is not None:
                return v, j + length
        return None

    def digits(self, k: int, max_len: int = 4) -> int | None:
        """Integer value of token k when it is a plain digit or CJK numeral token."""
        t = self.X[k]
        if self.K[k] == _NUM and t.isdigit() and len(t) <= max_len:
            return int(t)
        if self.K[k] == _CJKNUM:
            return _cjk_value(t)
        return None

    def upper_in_original(self, k: int) -> bool:
        return self.original(k).isupper()

    def line_start(self, k: int) -> bool:
        """Token k opens a line, possibly after a bullet character."""
        if k == 0 or not self.same_line(k):
            return True
        return self.X[k - 1] in {"*", "-", "•", "#", ">"} and (k == 1 or not self.same_line(k - 1))

    # ---- numbers and their units
    def read_number(self, i: int, money: bool = False) -> tuple[float, int] | None:
        """Value of the number at token i with its ordinal suffix or multiplier, and the end."""
        k, t = self.K[i], self.X[i]
        v = _parse_number(t) if k == _NUM else _cjk_value(t) if k == _CJKNUM else None
        if v is None:
            return None
        v, j = float(v), i + 1
        w = self.X[j]
        if self.adjacent(j) and w in _ORDINAL:
            return v, j + 1
        if self.adjacent(j) and (w == "k" or (money and w == "m")):
            return v * (1e3 if w == "k" else 1e6), j + 1
        if w in _MULTIPLIERS and self.same_line(j):
            return v * _MULTIPLIERS[w], j + 1
        return v, j

    def read_unit(self, j: int) -> tuple[str, str | None, int] | None:
        """A currency, percent or duration unit starting at token j: (kind, unit, end)."""
        if not self.same_line(j):
            return None
        r = self.phrase(j, _UNITS, _UNIT_FIRST)
        if r is not None:
            (kind, unit), end = r
            if end == j + 1 and self.X[j] in _ADJACENT_ONLY_UNITS and not self.adjacent(j):
                return None
            return kind, unit, end
        k = j
        while k < j + 2 and self.X[k] in _DURATION_MODIFIERS and self.same_line(k):
            k += 1
        if k > j:
            r = self.phrase(k, _UNITS, _UNIT_FIRST)
            if r is not None and r[0][0] == "duration" and self.same_line(k):
                return r[0][0], r[0][1], r[1]
        return None

    def modifier(self, k: int) -> bool:
        w = self.X[k]
        return w in _ADJECTIVES or w.endswith(_ADJ_SUFFIXES) or self.original(k)[:1].isupper()

    def read_noun(self, j: int) -> tuple[str, int] | None:
        """The counted noun after a number ("3 written quotes" -> quote): (noun, end)."""
        for k in range(j, min(j + 3, self.n)):
            w = self.X[k]
            if self.K[k] != _WORD or not self.same_line(k) or w in _STOP or len(w) < 2:
                return None
            nxt = self.K[k + 1] == _WORD and self.X[k + 1] not in _STOP and self.same_line(k + 1)
            if nxt and not _looks_plural(w) and self.modifier(k):
                continue
            return _singular(w), k + 1
        return None

    def range_unit(self, j: int) -> tuple[str, str | None] | None:
        """The unit of the second number of a range ("2,500 to 25,000 EUR", "10-15 days")."""
        if self.X[j] not in {"to", "-", "and", "or"} or self.K[j + 1] != _NUM:
            return None
        r = self.read_number(j + 1)
        if r is None:
            return None
        u = self.read_unit(r[1])
        if u is not None:
            return u[0], u[1]
        noun = self.read_noun(r[1])
        return ("number", noun[0]) if noun else None

    def glued(self, i: int) -> bool:
        """The number is the tail of a word ("mp3", "abc-12") that no other rule claimed."""
        if not self.adjacent(i):
            return False
        if self.K[i - 1] == _WORD:
            return True
        return self.X[i - 1] == "-" and self.adjacent(i - 1) and self.K[i - 2] == _WORD

    def space_grouped(self, i: int) -> tuple[float, int] | None:
        """"1 200 EUR", "12 500 €": digit groups split by single spaces, before a currency only."""
        raw, j = self.X[i], i + 1
        if not (raw.isdigit() and len(raw) <= 3 and self.K[j] == _NUM):
            return None
        while self.K[j] == _NUM and len(self.X[j]) == 3 and self.X[j].isdigit() and j - i < 5 \
                and self.S[j] - self.E[j - 1] == 1 and self.norm[self.E[j - 1]] == " ":
            raw, j = raw + self.X[j], j + 1
        u = self.read_unit(j) if j > i + 1 else None
        return (float(raw), j) if u is not None and u[0] == "money" else None

    def quantity(self, i: int) -> int:
        if self.glued(i):
            return i + 1
        r = self.space_grouped(i) or self.read_number(i)
        if r is None:
            return i + 1
        v, j = r
        u = self.read_unit(j)
        if u is None and self.X[j] == "-" and self.adjacent(j) and self.adjacent(j + 1) \
                and self.K[j + 1] == _WORD:
            u = self.read_unit(j + 1)  # "24-hour", "6-month"
        if u is not None:
            return self.emit(u[0], v, u[1], i, u[2])
        noun = self.read_noun(j)
        if noun is not None:
            return self.emit("number", v, noun[0], i, noun[1])
        inherited = self.range_unit(j)
        if inherited is not None:
            return self.emit(inherited[0], v, inherited[1], i, j)
        return self.bare(i, j, v)

    def bare(self, i: int, j: int, v: float) -> int:
        """A number without a unit: a list marker, a ratio, a year, or a bare number fact."""
        raw, nxt = self.X[i], self.X[j]
        if nxt in {".", ")"} and self.adjacent(j) and not self.adjacent(j + 1) \
                and (self.line_start(i) or i - 1 == self.marker_end):
            self.marker_end = j
            return j + 1
        if self.X[i - 1] == "(" and self.adjacent(i) and nxt == ")" and self.adjacent(j) and len(raw) <= 2:
            return j + 1
        if nxt == "/" and self.adjacent(j) and self.K[j + 1] == _NUM and self.adjacent(j + 1):
            return j + 2
        if raw.isdigit() and len(raw) == 4 and 1900 <= v <= 2100 and self.X[i - 1] in _YEAR_PREPS:
            return self.emit("date", raw, "y", i, j)
        return self.emit("number", v, None, i, j)

    # ---- dates and times
    def month_at(self, k: int) -> int | None:
        w = self.X[k]
        if self.K[k] != _WORD or w not in _ALL_MONTHS:
            return None
        if w in _CAPITAL_ONLY_MONTHS and not self.original(k)[:1].isupper():
            return None
        return _ALL_MONTHS[w]

    def year_at(self, k: int) -> int | None:
        t = self.X[k]
        if self.K[k] == _NUM and len(t) == 4 and t.isdigit() and self.same_line(k):
            return int(t)
        return None

    def finish_date(self, i: int, j: int, m: int, d: int) -> int | None:
        """Day d of month m read from tokens i..j-1, with an optional ", yyyy" after them."""
        k = j + 1 if self.X[j] == "," else j
        y = self.year_at(k)
        iso = _iso(y, m, d) if y is not None else None
        if iso is not None:
            return self.emit("date", iso, "ymd", i, k + 1)
        md = _month_day(m, d)
        return self.emit("date", md, "md", i, j) if md else None

    def date_day_first(self, i: int) -> int | None:
        """"1 March 2025", "1st of March", "31 January"."""
        d = self.digits(i, 2) if self.K[i] == _NUM else None
        if d is None:
            return None
        j = i + 1
        if self.adjacent(j) and self.X[j] in _ORDINAL:
            j += 1
        if self.X[j] == "of":
            j += 1
        m = self.month_at(j)
        if m is None or not self.same_line(j):
            return None
        j += 1
        if self.X[j] == "." and self.adjacent(j) and self.X[j - 1] in _MONTH_ABBR:
            j += 1
        return self.finish_date(i, j, m, d)

    def date_month_first(self, i: int) -> int | None:
        """"March 1, 2025", "March 1st", "March 2025"."""
        m = self.month_at(i)
        if m is None:
            return None
        j = i + 1
        if self.X[j] == "." and self.adjacent(j) and self.X[i] in _MONTH_ABBR:
            j += 1
        if not self.same_line(j):
            return None
        y = self.year_at(j)
        if y is not None and 1000 <= y <= 2999:
            return self.emit("date", f"{y:04d}-{m:02d}", "ym", i, j + 1)
        d = self.digits(j, 2) if self.K[j] == _NUM else None
        if d is None:
            return None
        j += 1
        if self.adjacent(j) and self.X[j] in _ORDINAL:
            j += 1
        if self.read_unit(j) is not None:
            return None  # "in March 3 days later": the number belongs to the unit
        return self.finish_date(i, j, m, d)

    def date_numeric(self, i: int) -> int | None:
        """"2025-03-01", "2025/03/01", "01.03.2025", "15/03/2025" (see the module docstring)."""
        raw = self.X[i]
        if "." in raw:
            parts = raw.split(".")
            if len(parts) != 3 or not all(p.isdigit() for p in parts):
                return None
            lens = tuple(len(p) for p in parts)
            if lens[0] == 4 and lens[1] <= 2 and lens[2] <= 2:
                y, m, d = map(int, parts)
            elif lens[0] <= 2 and lens[1] <= 2 and lens[2] == 4:
                d, m, y = map(int, parts)
            else:
                return None
            iso = _iso(y, m, d)
            return self.emit("date", iso, "ymd", i, i + 1) if iso else None
        sep = self.X[i + 1]
        if not raw.isdigit() or sep not in {"-", "/"} or self.X[i + 3] != sep \
                or not all(self.adjacent(k) for k in range(i + 1, i + 5)):
            return None
        b, c = self.X[i + 2], self.X[i + 4]
        if not (b.isdigit() and c.isdigit()) or len(b) > 2:
            return None
        if len(raw) == 4 and len(c) <= 2:
            iso = _iso(int(raw), int(b), int(c))
        elif len(raw) <= 2 and (len(c) == 4 or (sep == "/" and len(c) == 2)):
            y = int(c) if len(c) == 4 else 2000 + int(c)
            x, z = int(raw), int(b)
            iso = _iso(y, z, x) if x > 12 or x == z else _iso(y, x, z) if z > 12 else None
        else:
            return None
        return self.emit("date", iso, "ymd", i, i + 5) if iso else i + 5

    def date_cjk(self, i: int) -> int | None:
        """"2025年3月1日", "3月1日", "2025年3月", "2025年"."""
        a = self.digits(i, 4)
        if a is None:
            return None
        if self.X[i + 1] == "年":
            b = self.digits(i + 2, 2)
            if b is not None and self.X[i + 3] == "月":
                c = self.digits(i + 4, 2)
                iso = _iso(a, b, c) if c is not None and self.X[i + 5] in {"日", "号"} else None
                if iso:
                    return self.emit("date", iso, "ymd", i, i + 6)
                return self.emit("date", f"{a:04d}-{b:02d}", "ym", i, i + 4) if 1 <= b <= 12 else None
            if 1900 <= a <= 2100:
                return self.emit("date", f"{a:04d}", "y", i, i + 2)
            return None
        if self.X[i + 1] == "月" and 1 <= a <= 12:
            c = self.digits(i + 2, 2)
            md = _month_day(a, c) if c is not None and self.X[i + 3] in {"日", "号"} else None
            return self.emit("date", md, "md", i, i + 4) if md else i + 2
        return None

    def ampm(self, j: int) -> tuple[bool, int] | None:
        """(is_pm, end) for "am"/"pm"/"a.m."/"p.m." at token j."""
        w = self.X[j]
        if not self.same_line(j):
            return None
        if w in {"am", "pm"}:
            return w == "pm", j + 1
        if w in {"a", "p"} and self.X[j + 1] == "." and self.X[j + 2] == "m" \
                and self.adjacent(j + 1) and self.adjacent(j + 2):
            end = j + 4 if self.X[j + 3] == "." and self.adjacent(j + 3) else j + 3
            return w == "p", end
        return None

    def time(self, i: int) -> int | None:
        """"17:00", "5 pm", "5:30 p.m." -> "HH:MM"."""
        h = self.digits(i, 2) if self.K[i] == _NUM else None
        if h is None:
            return None
        j, minute, colon = i + 1, 0, False
        if self.X[j] == ":" and self.adjacent(j) and self.adjacent(j + 1) and self.K[j + 1] == _NUM \
                and len(self.X[j + 1]) == 2 and self.X[j + 1].isdigit():
            minute, j, colon = int(self.X[j + 1]), j + 2, True
        mer = self.ampm(j)
        if mer is not None:
            if not 1 <= h <= 12:
                return None
            h, j = h % 12 + (12 if mer[0] else 0), mer[1]
        elif not colon:
            return None
        if h > 24 or minute > 59:
            return None
        return self.emit("time", f"{h:02d}:{minute:02d}", None, i, j)

    # ---- sections, identifiers, money prefixes, number words, roles
    def section_value(self, j: int, kind: str) -> tuple[object, int] | None:
        """The number of a section at token j: int, dotted str ("3.2"), letter ("B"), roman -> int."""
        t, k = self.X[j], self.K[j]
        if not self.same_line(j):
            return None
        if k == _NUM:
            parts = t.split(".")
            if "," in t or len(parts) > 6 or not all(p.isdigit() and len(p) <= 4 for p in parts):
                return None
            if self.read_unit(j + 1) is not None:
                return None  # "stage 2 weeks": a duration, not a stage
            value: object = int(t) if len(parts) == 1 else ".".join(str(int(p)) for p in parts)
            end = j + 1
            if self.adjacent(end) and self.K[end] == _WORD and len(self.X[end]) == 1:
                value, end = f"{value}{self.X[end].upper()}", end + 1
            return value, end
        if k == _WORD and t.isascii() and t.isalpha():
            upper = self.upper_in_original(j)
            if upper and (len(t) > 1 or t in "ivx") and _roman(t):
                return _roman(t), j + 1
            if len(t) == 1 and (upper or kind in _SECTION_LETTERS_ANY_CASE):
                return t.upper(), j + 1
        return None

    def section(self, i: int) -> int | None:
        """"Article 5", "Art. 5", "Section 3.2", "Annex III", "annex B", "tier-3", "Articles 5 and 6"."""
        w = self.X[i]
        kind = _SECTIONS[w]
        j = i + 1
        if self.adjacent(j) and (self.X[j] == "-" or (self.X[j] == "." and w in _SECTION_ABBR)):
            j += 1
        r = self.section_value(j, kind)
        if r is None:
            return None
        end = self.emit("section", r[0], kind, i, r[1])
        label = self.surface(i, i + 1)
        plural = w.endswith("s") or w == "appendices"
        for _ in range(20 if plural else 0):
            nxt = self.section_value(end + 1, kind) if self.X[end] in _SECTION_LIST_SEPS else None
            if nxt is None:
                break
            end = self.emit("section", nxt[0], kind, end + 1, nxt[1], f"{label} {self.surface(end + 1, nxt[1])}")
        return end

    def finish_id(self, i: int, segments: list[str], k: int) -> int | None:
        t = self.X[k]
        if self.K[k] != _NUM or not t.isdigit() or len(t) > 9:
            return None
        return self.emit("id", "-".join(s.upper() for s in segments) + "-" + t, None, i, k + 1)

    def ident(self, i: int) -> int | None:
        """"FIN-03", "IT-SEC-4", "FIN03", "FIN 03", "form fin 03" -> "FIN-03"."""
        w = self.X[i]
        if not (w.isascii() and w.isalpha() and len(w) <= 10) or i + 1 >= self.n:
            return None
        segments, k = [w], i
        while self.X[k + 1] == "-" and self.adjacent(k + 1) and self.adjacent(k + 2) and len(segments) <= 4:
            if self.K[k + 2] == _NUM:
                return self.finish_id(i, segments, k + 2)
            nw = self.X[k + 2]
            if not (self.K[k + 2] == _WORD and nw.isascii() and nw.isalpha() and len(nw) <= 10):
                return None
            segments.append(nw)
            k += 2
        if len(segments) > 1 or self.K[i + 1] != _NUM or w in _CURRENCY_CODES:
            return None
        if self.adjacent(i + 1):
            return self.finish_id(i, segments, i + 1) if self.upper_in_original(i) else None
        if not self.same_line(i + 1) or w in _STOP or w in _ALL_MONTHS:
            return None
        formish = self.X[i - 1] in _FORM_WORDS
        if (formish or (self.upper_in_original(i) and 2 <= len(w) <= 6)) and self.read_unit(i + 2) is None:
            return self.finish_id(i, segments, i + 1)
        return None

    def money_prefix(self, i: int) -> int | None:
        """"EUR 25", "€25", "$1,200", "€25k", "€1.2m"."""
        j = i + 1
        if self.K[j] != _NUM or not self.same_line(j):
            return None
        r = self.read_number(j, money=True)
        if r is None:
            return None
        return self.emit("money", r[0], _CURRENCY_PREFIX[self.X[i]], i, r[1])

    def read_number_words(self, i: int) -> tuple[float, int] | None:
        """"twenty-five" -> 25, "one hundred and fifty" -> 150: (value, end)."""
        total = cur = count = 0
        j, last = i, ""
        while j < self.n and count < 10:
            w = self.X[j]
            if w in _NUMBER_WORDS:
                cat = "unit" if 1 <= _NUMBER_WORDS[w] <= 9 else "teen"
                if last in {"unit", "teen"} or (last == "ten" and cat == "teen"):
                    break
                cur += _NUMBER_WORDS[w]
            elif w in _TENS:
                if last in {"unit", "teen", "ten"}:
                    break
                cat, cur = "ten", cur + _TENS[w]
            elif w == "hundred":
                if last in {"ten", "hundred"}:
                    break
                cat, cur = "hundred", (cur or 1) * 100
            elif w in _SCALES:
                if last == "scale":
                    break
                cat, total, cur = "scale", total + (cur or 1) * _SCALES[w], 0
            else:
                break
            last, count, j = cat, count + 1, j + 1
            hyphen = last == "ten" and self.X[j] == "-" and self.adjacent(j) and self.adjacent(j + 1) \
                and self.X[j + 1] in _NUMBER_WORDS
            joined = last in {"hundred", "scale"} and self.X[j] == "and" and self.X[j + 1] in _ALL_NUMBER_WORDS
            j += hyphen or joined
        return (float(total + cur), j) if count else None

    def number_words(self, i: int) -> int | None:
        r = self.read_number_words(i)
        if r is None:
            return None
        v, j = r
        hyphen = self.X[j] == "-" and self.adjacent(j) and self.adjacent(j + 1)
        u = self.read_unit(j + 1 if hyphen else j)
        if u is not None:
            return self.emit(u[0], v, u[1], i, u[2])
        if not hyphen and v >= 2:
            noun = self.read_noun(j)
            if noun is not None:
                return self.emit("number", v, noun[0], i, noun[1])
        return j

    def role(self, i: int) -> int | None:
        r = self.phrase(i, _ROLE_PHRASES, _ROLE_FIRST, 5)
        return self.emit("role", r[0], None, i, r[1]) if r else None

    # ---- dispatch by the kind of the first token
    def _at_number(self, i: int) -> int | None:
        nxt = self.X[i + 1]  # cheap pre-checks: most numbers are neither dates nor times
        j = None
        if nxt in _NUMERIC_DATE_SEPS or "." in self.X[i]:
            j = self.date_numeric(i)
        elif nxt in _CJK_DATE_MARKS:
            j = self.date_cjk(i)
        elif nxt in _DAY_FIRST_NEXT:
            j = self.date_day_first(i)
        if not j and (nxt in _TIME_NEXT):
            j = self.time(i)
        return j or self.quantity(i)

    def _at_cjk_number(self, i: int) -> int | None:
        j = self.date_cjk(i)
        if j:
            return j
        r = self.read_number(i)
        u = self.read_unit(r[1]) if r is not None else None
        return self.emit(u[0], r[0], u[1], i, u[2]) if u is not None else i + 1

    def _at_word(self, i: int) -> int | None:
        w = self.X[i]
        if w not in _WORD_TRIGGERS and self.K[i + 1] != _NUM and self.X[i + 1] != "-":
            return None  # cheap pre-check: most words start no fact
        j = self.date_month_first(i) if w in _ALL_MONTHS else None
        if not j and w in _SECTIONS:
            j = self.section(i)
        j = j or self.ident(i)
        if not j and w in _CURRENCY_PREFIX:
            j = self.money_prefix(i)
        if not j and w in _ALL_NUMBER_WORDS:
            j = self.number_words(i)
        if not j and w in _ROLE_FIRST:
            j = self.role(i)
        return j

    def _at_symbol(self, i: int) -> int | None:
        w = self.X[i]
        if w == "§":
            return self.section(i)
        return self.money_prefix(i) if w in _CURRENCY_SYMBOLS else None


# --------------------------------------------------------------------------- public API

def _as_text(text: object) -> str:
    if isinstance(text, str):
        return text
    try:
        return "" if text is None else str(text)
    except Exception:  # noqa: BLE001  (a hostile __str__: no text)
        return ""


def _scan(text: str) -> list[Fact]:
    scanner = _Scanner(text)
    try:
        return scanner.run()
    except Exception:  # noqa: BLE001  (safety net only; the unit tests fuzz _Scanner.run without it)
        return scanner.facts


def extract_facts(text: str) -> list[Fact]:
    """The key facts of ``text``, normalised, de-duplicated (by ``Fact.key``), in order of appearance."""
    seen: set[tuple] = set()
    out: list[Fact] = []
    for f in _scan(_as_text(text)):
        k = f.key()
        if k not in seen:
            seen.add(k)
            out.append(f)
    return out


def _views(f: Fact) -> list[tuple[tuple, object]]:
    """(slot, canonical value) pairs an answer fact fills: its own, and a full date's coarser ones."""
    out = [(f.slot(), _canon(f.kind, f.value))]
    v = f.value
    if f.kind == "date" and isinstance(v, str):
        if f.unit == "ymd":
            out += [(("date", "md"), "--" + v[5:]), (("date", "ym"), v[:7]), (("date", "y"), v[:4])]
        elif f.unit == "ym":
            out.append((("date", "y"), v[:4]))
    return out


class _AnswerIndex:
    """The answer's facts by slot and value, for matching reference facts in constant time."""

    def __init__(self, facts: list[Fact]) -> None:
        self.slots: dict[tuple, dict[object, tuple[int, Fact]]] = {}
        self.bare: set[object] = set()
        self.quantities: set[object] = set()
        for pos, f in enumerate(facts):
            for slot, value in _views(f):
                self.slots.setdefault(slot, {}).setdefault(value, (pos, f))
            if f.kind in QUANTITY_KINDS:
                c = _canon(f.kind, f.value)
                self.quantities.add(c)
                if f.kind == "number" and f.unit is None:
                    self.bare.add(c)

    def states(self, f: Fact) -> bool:
        """Whether the answer states reference fact f (the leniencies are in the module docstring)."""
        c = _canon(f.kind, f.value)
        if c in self.slots.get(f.slot(), {}):
            return True
        if f.kind == "number" and f.unit is None:
            return c in self.quantities
        return f.kind in QUANTITY_KINDS and c in self.bare


def _contradictions(ref: list[Fact], index: _AnswerIndex) -> list[str]:
    """Surface texts of the answer facts that contradict the reference (definition above)."""
    by_slot: dict[tuple, list[Fact]] = {}
    for f in ref:
        if f.kind in CONTRADICTION_KINDS and not (f.kind == "number" and f.unit is None):
            by_slot.setdefault(f.slot(), []).append(f)
    hits: dict[int, str] = {}
    for slot, facts in by_slot.items():
        if any(index.states(f) for f in facts):
            continue
        ref_values = {_canon(f.kind, f.value) for f in facts}
        for value, (pos, g) in index.slots.get(slot, {}).items():
            if value not in ref_values:
                hits.setdefault(pos, g.text)
    return [hits[p] for p in sorted(hits)]


def fact_scores(answer: str, reference: str) -> dict:
    """Fact recall, all-facts and contradiction of ``answer`` against ``reference``.

    Returns ``{"fact_recall", "all_facts", "contradiction", "n_ref_facts", "n_matched",
    "missing", "contradicted"}``; the definitions are in the module docstring. ``fact_recall``
    and ``all_facts`` are None when the reference has no key fact.
    """
    ref = extract_facts(reference)
    index = _AnswerIndex(extract_facts(answer))
    stated = [index.states(f) for f in ref]
    n, matched = len(ref), sum(stated)
    contradicted = _contradictions(ref, index)
    return {
        "fact_recall": matched / n if n else None,
        "all_facts": (1.0 if matched == n else 0.0) if n else None,
        "contradiction": 1.0 if contradicted else 0.0,
        "n_ref_facts": n,
        "n_matched": matched,
        "missing": [f.text for f, ok in zip(ref, stated) if not ok],
        "contradicted": contradicted,
    }
