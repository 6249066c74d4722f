"""General-skill forgetting check: does fine-tuning on policy documents cost the model general
ability?

``data/general_skills.jsonl`` ships 40 easy questions with one short, unambiguous answer each
(world facts, small arithmetic, units and time, English word forms, everyday science), nothing
to do with any policy. Base and fine-tuned models answer the same questions; the mean
:func:`accept_score` of each is its general-skill accuracy, and "fine-tuned minus base" on it
measures forgetting (catastrophic forgetting shows as a drop; a base model well above 0 and below
1 leaves room to see a drop at all). It measures recall of short facts and simple skills, not
reasoning, fluency or safety, and it is only as fine as 40 questions allow (one question is
2.5 points).

Row format (one JSON object a line)::

    {"qa_id": "gen-01", "question": "...", "answer": "<one-sentence reference>",
     "accept": ["<alias>", ...], "skill": "<category>"}

:func:`read_general_set` validates the rows; ``answer`` is a reference for reading and for the
reference-based metrics, the score itself only looks at ``accept``.

Scoring rules of :func:`accept_score` (1.0 when *any* accepted alias occurs in the answer, else
0.0). Answer and alias go through the same normalisation:

* Unicode NFKC, casefold, Latin-script accents (the combining diacritics U+0300-U+036F after
  NFKD) dropped (``"Brasília"`` = ``"brasilia"``; NFKC also turns
  ``"CO₂"`` into ``"co2"`` and full-width digits into ASCII ones);
* split into tokens: runs of letters, runs of digits (with ``.``/``,`` between digit groups), and
  single CJK characters (scripts written without spaces). Everything else (punctuation,
  symbols, spaces, ``-``, ``%``, ``°``) is a separator, so ``"carbon-dioxide"`` =
  ``"carbon dioxide"`` and ``"30%"`` holds the number 30. A letter run next to a digit run is two
  tokens: ``"CO2"`` is ``co 2`` on both sides, and ``"30th"`` / ``"120min"`` hold 30 / 120;
* numbers canonical: thousands separators dropped (``"1,000"`` = ``"1000"``), trailing decimal
  zeros and leading zeros dropped (``"120.0"`` = ``"120"``, ``"0.50"`` = ``"0.5"``, ``"007"`` =
  ``"7"``); other groupings (``"3,5"``, ``"1.2.3"``) become separate numbers. Signs are
  punctuation (``"-5"`` holds 5);
* English cardinal number words become digits: ``"one hundred twenty"``, ``"one hundred and
  twenty"``, ``"twenty-four"``, ``"fifteen hundred"``, ``"two thousand five"``, up to billions.
  Ordinals (``"second"``) are not numbers. ``"one"`` used as a pronoun also becomes ``1`` (a
  lenient side effect);
* match: the alias's tokens occur as a contiguous run of the answer's tokens (whole tokens), so
  ``"30"`` does not match ``"300"`` or ``"3.0"``, and ``"went"`` does not match ``"wentworth"``.

The scorer is deliberately lenient: it checks that the expected answer is *mentioned*, not that
it is asserted, so ``"not Paris"``, ``"Paris or Lyon"``, ``"Jupiter, but it's actually Saturn"``
or a list of guesses that includes the alias all score 1.0, and ``"1/1000 of a kilogram"``
holds 1000 (``/`` is a separator). This inflates the scores of rambling small models a little,
the same way for base and fine-tuned; an LLM judge is the tool for negated or hedged answers.
An alias that normalises to no token (``""``, ``"!!"``) never matches.

:func:`accept_score` is total: any answer (``None``, bytes, numbers, lone surrogates, megabytes
of text) and any ``accept`` (``None``, a bare string, non-string items) give 0.0 or 1.0 without
raising, in time linear in the answer for a given alias list.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["REQUIRED_KEYS", "accept_score", "answer_tokens", "read_general_set", "skills"]

REQUIRED_KEYS = ("qa_id", "question", "answer", "accept", "skill")

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
# one CJK character | a run of other letters | digit groups joined by '.' or ','
_TOKEN = re.compile(rf"[{_CJK}]|[^\W\d_{_CJK}]+|\d+(?:[.,]\d+)*")
_THOUSANDS = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_DECIMAL = re.compile(r"\d+(?:\.\d+)?")
_SEP = re.compile(r"[.,]")
_DIGIT = re.compile(r"\d")
_ACCENTS = re.compile("[\u0300-\u036f]+")

_UNITS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen".split())}
_TENS = {w: 10 * i for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split(), 2)}
_SCALES = {"thousand": 10**3, "million": 10**6, "billion": 10**9}
_NUMBER_WORDS = frozenset(_UNITS) | frozenset(_TENS) | frozenset(_SCALES) | {"hundred"}


# --------------------------------------------------------------------------- normalisation

def _to_text(x: Any) -> str:
    """Any value as text, never raising ("" when it cannot be had)."""
    if x is None:
        return ""
    if isinstance(x, str):
        return x
    if isinstance(x, (bytes, bytearray, memoryview)):
        try:
            return bytes(x).decode("utf-8", "replace")
        except Exception:
            return ""
    try:
        s = str(x)  # may raise: a huge int (sys.set_int_max_str_digits), a broken __str__
    except Exception:
        return ""
    return s if isinstance(s, str) else ""


def _fold(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold()
    if not text.isascii():
        decomposed = unicodedata.normalize("NFKD", text)
        if _ACCENTS.search(decomposed):
            text = unicodedata.normalize("NFKC", _ACCENTS.sub("", decomposed))
    return text


def _ascii_digits(tok: str) -> str:
    """Decimal digits of any script as ASCII (NFKC leaves e.g. Arabic-Indic digits alone)."""
    if tok.isascii():
        return tok
    return "".join(c if c in ".," else str(unicodedata.decimal(c, 0)) for c in tok)


def _canon_int(digits: str) -> str:
    return digits.lstrip("0") or "0"


def _canon_decimal(tok: str) -> str:
    whole, _, frac = tok.partition(".")
    frac = frac.rstrip("0")
    return _canon_int(whole) + ("." + frac if frac else "")


def _number_tokens(tok: str) -> list[str]:
    tok = _ascii_digits(tok)
    if _THOUSANDS.fullmatch(tok):
        return [_canon_decimal(tok.replace(",", ""))]
    if _DECIMAL.fullmatch(tok):
        return [_canon_decimal(tok)]
    return [_canon_int(p) for p in _SEP.split(tok)]


class _NumberPhrase:
    """Reads English cardinal number words ("three hundred and sixty-six") into one number.

    ``feed`` returns False when the word cannot continue the phrase (the caller then ends it and
    starts over with that word)."""

    def __init__(self) -> None:
        self.total = 0          # sum of completed thousand/million/billion groups
        self.group = 0          # the current group, below 1000
        self.state = "start"    # start | unit | tens | tens_unit | hundred | scale
        self.last_scale = 0     # scales must fall: "two million three thousand"

    def copy(self) -> _NumberPhrase:
        other = _NumberPhrase()
        other.total, other.group, other.state, other.last_scale = self.total, self.group, self.state, self.last_scale
        return other

    def value(self) -> str:
        return str(self.total + self.group)

    def feed(self, w: str) -> bool:
        st = self.state
        if w in _UNITS:
            v = _UNITS[w]
            if st in ("start", "hundred", "scale"):
                self.group += v
                self.state = "unit"
                return True
            if st == "tens" and 0 < v < 10:
                self.group += v
                self.state = "tens_unit"
                return True
            return False
        if w in _TENS:
            if st in ("start", "hundred", "scale"):
                self.group += _TENS[w]
                self.state = "tens"
                return True
            return False
        if w == "hundred":
            if st == "start":
                self.group = 100
            elif st == "unit" and 0 < self.group < 100:
                self.group *= 100
            else:
                return False
            self.state = "hundred"
            return True
        s = _SCALES[w]
        if self.last_scale and s >= self.last_scale:
            return False
        if st == "start":
            self.total, self.group = s, 0
        elif st in ("unit", "tens", "tens_unit", "hundred") and self.group > 0:
            self.total += self.group * s
            self.group = 0
        else:
            return False
        self.last_scale = s
        self.state = "scale"
        return True

    def takes_and(self) -> bool:
        """Whether "and" may continue the phrase here ("one hundred and twenty")."""
        return self.state in ("hundred", "scale")


def _words_to_numbers(tokens: list[str]) -> list[str]:
    out: list[str] = []
    phrase: _NumberPhrase | None = None
    n = len(tokens)
    i = 0
    while i < n:
        t = tokens[i]
        if t in _NUMBER_WORDS:
            if phrase is None:
                phrase = _NumberPhrase()
            if not phrase.feed(t):
                out.append(phrase.value())
                phrase = _NumberPhrase()
                phrase.feed(t)  # a fresh phrase takes any number word
            i += 1
            continue
        if phrase is not None:
            if (t == "and" and phrase.takes_and() and i + 1 < n and tokens[i + 1] in _NUMBER_WORDS
                    and phrase.copy().feed(tokens[i + 1])):
                i += 1  # "and" is part of the number; the next word is fed on the next turn
                continue
            out.append(phrase.value())
            phrase = None
        out.append(t)
        i += 1
    if phrase is not None:
        out.append(phrase.value())
    return out


def answer_tokens(text: Any) -> list[str]:
    """The normalised tokens :func:`accept_score` matches on (rules in the module docstring)."""
    raw = _TOKEN.findall(_fold(_to_text(text)))
    tokens: list[str] = []
    for t in raw:
        if _DIGIT.match(t):
            tokens.extend(_number_tokens(t))
        else:
            tokens.append(t)
    return _words_to_numbers(tokens)


def _aliases(accept: Any) -> list[Any]:
    if accept is None:
        return []
    if isinstance(accept, (str, bytes, bytearray, memoryview)):
        return [accept]
    try:
        return list(accept)
    except Exception:
        return [accept]


# --------------------------------------------------------------------------- scoring

def accept_score(answer: str, accept: list[str]) -> float:
    """1.0 when any accepted alias occurs in ``answer`` as a whole run of normalised tokens,
    else 0.0. Lenient about negation and hedging ("not Paris" scores 1.0); total, never raises."""
    try:
        tokens = answer_tokens(answer)
        if not tokens:
            return 0.0
        haystack = " " + " ".join(tokens) + " "
        seen: set[str] = set()
        for alias in _aliases(accept):
            needle_tokens = answer_tokens(alias)
            if not needle_tokens:
                continue
            needle = " " + " ".join(needle_tokens) + " "
            if needle in seen:
                continue
            seen.add(needle)
            if needle in haystack:
                return 1.0
        return 0.0
    except Exception:  # defensive: the rules above raise on nothing known; a score never crashes a run
        return 0.0


# --------------------------------------------------------------------------- the question set

def _bad(path: Path | str, lineno: int, msg: str) -> ValueError:
    return ValueError(f"{path}:{lineno}: {msg}")


def _nonempty_str(v: Any) -> bool:
    return isinstance(v, str) and bool(v.strip())


def read_general_set(path: str | Path) -> list[dict]:
    """Read and validate a general-skill set (JSONL, blank lines skipped).

    Every row is a JSON object with ``qa_id`` (a non-empty string, unique in the file),
    ``question``, ``answer`` and ``skill`` (non-empty strings) and ``accept`` (a non-empty list
    of non-empty strings, each with at least one token after normalisation, so each can match);
    other keys are kept. Raises ``ValueError("<path>:<line>: ...")`` for the first bad row, and
    for a file with no rows."""
    rows: list[dict] = []
    first_line: dict[str, int] = {}
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError as e:
                raise _bad(path, lineno, f"not UTF-8: {e}") from None
            if lineno == 1:
                line = line.lstrip("\ufeff").strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise _bad(path, lineno, f"invalid JSON line: {e}") from None
            if not isinstance(row, dict):
                raise _bad(path, lineno, f"a row must be a JSON object, got {type(row).__name__}")
            missing = [k for k in REQUIRED_KEYS if k not in row]
            if missing:
                raise _bad(path, lineno, f"missing {missing}")
            for k in ("qa_id", "question", "answer", "skill"):
                if not _nonempty_str(row[k]):
                    raise _bad(path, lineno, f"{k} must be a non-empty string, got {row[k]!r}"[:300])
            qa_id = row["qa_id"]
            if qa_id in first_line:
                raise _bad(path, lineno, f"duplicate qa_id {qa_id!r} (first on line {first_line[qa_id]})")
            acc = row["accept"]
            if not isinstance(acc, list) or not acc:
                raise _bad(path, lineno, f"accept must be a non-empty list of strings, got {acc!r}"[:300])
            for a in acc:
                if not _nonempty_str(a):
                    raise _bad(path, lineno, f"accept holds {a!r}, not a non-empty string"[:300])
                if not answer_tokens(a):
                    raise _bad(path, lineno, f"accept alias {a!r} has no letters or digits, so it can never match"[:300])
            first_line[qa_id] = lineno
            rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no rows")
    return rows


def skills(rows: Iterable[dict]) -> dict[str, int]:
    """Rows per skill category, sorted by name."""
    out: dict[str, int] = {}
    for r in rows:
        out[r["skill"]] = out.get(r["skill"], 0) + 1
    return dict(sorted(out.items()))
