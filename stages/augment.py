"""augment: the study's four text augmentations, applied to the TRAIN split only.

Reads   data/split/train.jsonl (split rows with ``messages``)
Params  ``augment`` (see :class:`AugmentConfig`)
Writes  data/augment/train.jsonl    every original train row (``augmentation: null``), each
                                    followed by its augmented copies (new ``qa_id``,
                                    ``augmentation`` {op, seed, parent_qa_id, engine, copy,
                                    fields}, ``messages`` rebuilt)
        data/augment/skipped.jsonl  every planned copy that was not emitted, with its reason
        data/stats/augment.json     rows in/out, augmented by op, skipped by reason, engines

Ops (one drawn per copy with the ``weights`` of params, from a seed derived from the global
seed, the row's qa_id and the copy number, so adding or removing a row changes no other row):

- ``synonym``: WordNet synonym replacement (nltk over Debian's WordNet files, offline).
- ``back_translation``: English -> pivot -> English with Apertium (offline, default),
  Google Translate via deep-translator (needs network), or the local teacher LLM.
- ``char_delete`` / ``char_swap``: random deletion of letters / swap of neighbouring letters
  inside words (first and last letter, digits, punctuation and spaces are never touched).

The question (the model's input) is augmented; the answer only with ``augment_answer: true``.
A copy identical to its parent (or to an earlier copy) is skipped and counted, never emitted.
An engine that a positive weight asks for but that is not installed is an error that says how
to install it.
"""

from __future__ import annotations

import argparse
import functools
import os
import random
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

from policytune.core.params import ParamsError, load_section
from policytune.core.progress import get_logger
from policytune.core.records import read_jsonl, stable_id, write_json, write_jsonl

TRAIN_PATH = Path("data/split/train.jsonl")
OUT_PATH = Path("data/augment/train.jsonl")
SKIPPED_PATH = Path("data/augment/skipped.jsonl")
STATS_PATH = Path("data/stats/augment.json")

OPS = ("synonym", "back_translation", "char_delete", "char_swap")
ENGINES = ("apertium", "google", "teacher")

log = get_logger("augment")


# ---------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------

@dataclass
class SynonymConfig:
    rate: float = field(default=0.15, metadata={
        "help": "fraction of the words that have WordNet synonyms to replace (at least one)"})
    max_senses: int = field(default=2, metadata={
        "help": "take synonyms from the word's N most frequent senses only"})
    wordnet_dir: str = field(default="/usr/share/wordnet", metadata={
        "help": "WordNet 3.0 dict folder (Debian wordnet-base + wordnet-sense-index)"})
    nltk_data: str = field(default=".cache/nltk_data", metadata={
        "help": "cache folder where the nltk WordNet corpus is assembled (NLTK_DATA)"})


@dataclass
class TeacherConfig:
    """The ``teacher`` back-translation engine: a policytune.lm.backends local backend (its field names)."""
    backend: str = field(default="local", metadata={"help": "policytune.lm.backends backend (local)"})
    model_dir: str = field(default="models/teacher", metadata={"help": "prepared causal LM folder"})
    dtype: str = field(default="auto", metadata={"help": "auto|bfloat16|float16|float32"})
    quantize: str = field(default="auto", metadata={"help": "none | int8 | auto (int8 Linear layers on a float32 CPU)"})
    batch_size: int = field(default=8, metadata={"help": "prompts per generate call"})
    device: str = field(default="auto", metadata={"help": "auto|cpu|cuda"})
    max_new_tokens: int = field(default=128, metadata={"help": "token limit per translation"})


@dataclass
class BackTranslationConfig:
    engine: str = field(default="apertium", metadata={"help": "apertium (offline) | google (network) | teacher (local LLM)"})
    pivot: str = field(default="es", metadata={"help": "pivot language (ISO 639-1)"})
    timeout_s: float = field(default=120.0, metadata={"help": "limit per engine call (one Apertium batch, one Google request)"})
    batch_size: int = field(default=256, metadata={"help": "texts per Apertium call / teacher batch"})
    keep_numbers: bool = field(default=True, metadata={
        "help": "skip a back translation whose numbers differ from the original's (counted)"})
    google_proxy: Optional[str] = field(default=None, metadata={"help": "https proxy URL for the google engine"})
    teacher: TeacherConfig = field(default_factory=TeacherConfig)


@dataclass
class CharConfig:
    word_p: float = field(default=0.3, metadata={"help": "probability that an eligible word is altered (at least one word)"})
    char_p: float = field(default=0.1, metadata={
        "help": "in an altered word, probability of each further edit beyond the first"})
    min_word_len: int = field(default=4, metadata={"help": "shorter words are never altered"})


@dataclass
class AugmentConfig:
    seed: int = field(default=42, metadata={"help": "global seed; each copy's seed derives from it and the qa_id"})
    copies: int = field(default=1, metadata={"help": "augmented copies drawn per train row"})
    weights: dict = field(default_factory=lambda: {op: 1.0 for op in OPS}, metadata={
        "help": "relative probability of each op (synonym, back_translation, char_delete, char_swap); "
                "0 or left out disables it"})
    augment_answer: bool = field(default=False, metadata={"help": "also augment the answer (default: answers stay clean)"})
    synonym: SynonymConfig = field(default_factory=SynonymConfig)
    back_translation: BackTranslationConfig = field(default_factory=BackTranslationConfig)
    char: CharConfig = field(default_factory=CharConfig)


class EngineUnavailable(RuntimeError):
    """A requested augmentation engine is not installed / not reachable; says how to fix it."""


def check_config(cfg: AugmentConfig) -> dict[str, float]:
    unknown = sorted(set(cfg.weights) - set(OPS))
    if unknown:
        raise ParamsError(f"augment.weights: unknown op(s) {', '.join(unknown)}; valid: {', '.join(OPS)}")
    weights = {op: float(cfg.weights.get(op, 0.0)) for op in OPS}
    if any(w < 0 for w in weights.values()) or (cfg.copies > 0 and sum(weights.values()) <= 0):
        raise ParamsError(f"augment.weights must be >= 0 with a positive sum, got {cfg.weights}")
    if cfg.copies < 0:
        raise ParamsError(f"augment.copies must be >= 0, got {cfg.copies}")
    if cfg.back_translation.engine not in ENGINES:
        raise ParamsError(f"augment.back_translation.engine must be one of {', '.join(ENGINES)}, "
                          f"got {cfg.back_translation.engine!r}")
    for name in ("word_p", "char_p"):
        v = getattr(cfg.char, name)
        if not 0.0 <= v <= 1.0:
            raise ParamsError(f"augment.char.{name} must be in [0, 1], got {v}")
    return weights


def record_seed(seed: int, qa_id: str, copy: int, part: str = "") -> int:
    """32-bit seed of one copy of one row (independent of every other row)."""
    return int(stable_id("augment", seed, qa_id, copy, part, n=8), 16)


# ---------------------------------------------------------------------------------------------
# character ops
# ---------------------------------------------------------------------------------------------

WORD_RE = re.compile(r"[^\W\d_]+")  # runs of letters (any script); digits/punct/space excluded


def _edit_words(text: str, rng: random.Random, cfg: CharConfig, edit: Callable[[str, random.Random], str]) -> str:
    words = [m for m in WORD_RE.finditer(text) if len(m.group()) >= cfg.min_word_len]
    if not words:
        return text
    chosen = [m for m in words if rng.random() < cfg.word_p]
    if not chosen:
        chosen = [rng.choice(words)]
    out, last = [], 0
    for m in chosen:
        out.append(text[last:m.start()])
        out.append(edit(m.group(), rng))
        last = m.end()
    out.append(text[last:])
    return "".join(out)


def char_delete(text: str, rng: random.Random, cfg: CharConfig) -> str:
    """Delete letters inside words (never the first or last letter); at least one per altered word."""

    def edit(w: str, rng: random.Random) -> str:
        inner = list(range(1, len(w) - 1))
        k = 1 + sum(rng.random() < cfg.char_p for _ in inner[1:])
        k = min(k, max(1, len(inner) // 2))
        drop = set(rng.sample(inner, k))
        return "".join(c for i, c in enumerate(w) if i not in drop)

    return _edit_words(text, rng, cfg, edit)


def char_swap(text: str, rng: random.Random, cfg: CharConfig) -> str:
    """Swap neighbouring letters inside words (first and last letter stay); at least one swap."""

    def edit(w: str, rng: random.Random) -> str:
        pairs = [i for i in range(1, len(w) - 2) if w[i] != w[i + 1]]  # swap i, i+1
        if not pairs:
            return w
        first = rng.choice(pairs)
        picks = {first} | {i for i in pairs if i != first and rng.random() < cfg.char_p}
        chars, used = list(w), set()
        for i in sorted(picks):
            if i in used or i + 1 in used:
                continue
            chars[i], chars[i + 1] = chars[i + 1], chars[i]
            used |= {i, i + 1}
        return "".join(chars)

    return _edit_words(text, rng, cfg, edit)


# ---------------------------------------------------------------------------------------------
# synonym replacement (WordNet)
# ---------------------------------------------------------------------------------------------

STOPWORDS = frozenset("""
a about above after again against all also am an and any are as at be because been before being
below between both but by can could did do does doing done down during each either else ever
few for from further get gets got had has have having he her here hers herself him himself his
how i if in into is it its itself just least less let like made make many may me might more most
much must my myself neither no nor not now of off on once only or other ought our ours ourselves
out over own per same shall she should since so some such than that the their theirs them
themselves then there these they this those through thus to too under until up upon us very via
was we were what when where whether which while who whom whose why will with within without
would yes yet you your yours yourself yourselves
""".split())
_DETERMINERS = frozenset("a an the this that these those my your our their its his her each every "
                         "any some no all another which what whose".split())
_VERB_CUES = frozenset("to must can could should shall will would may might do does did please".split())
SYN_WORD_RE = re.compile(r"[A-Za-z]+(?:-[A-Za-z]+)*")


def inflect_s(word: str) -> str:
    """Regular English -s form (plural noun / 3rd-person verb): policy -> policies, tax -> taxes."""
    if re.search(r"[^aeiou]y$", word):
        return word[:-1] + "ies"
    if re.search(r"(s|x|z|ch|sh)$", word):
        return word + "es"
    return word + "s"


class SynonymReplacer:
    """WordNet synonym replacement with a little context for the part of speech.

    For each candidate word: its base form by WordNet morphology (only the form itself, or a
    regular -s plural / 3rd person, which the synonym then gets back), the part of
    speech picked from a cue before it (determiner -> noun/adjective, modal or "to" -> verb,
    ``-ly`` -> adverb) else the most frequent in SemCor counts, and synonyms from that base's
    ``max_senses`` most frequent senses, preferring lemmas seen in SemCor. Stopwords, acronyms,
    capitalised words inside a sentence (names), words next to digits and words that form a
    WordNet multi-word entry with a neighbour ("sign off", "conflict of interest") are never
    replaced.
    """

    def __init__(self, cfg: SynonymConfig, wordnet=None):
        self.cfg = cfg
        if wordnet is None:
            from policytune.dataset.wordnet import WordNetUnavailable, load_wordnet

            try:
                wordnet = load_wordnet(cfg.nltk_data, cfg.wordnet_dir)
            except WordNetUnavailable as e:
                raise EngineUnavailable(f"synonym op: {e}") from None
        self.wn = wordnet
        self.synonyms = functools.lru_cache(maxsize=100_000)(self._synonyms)
        self.is_lemma = functools.lru_cache(maxsize=100_000)(lambda s: bool(self.wn.synsets(s)))

    def version(self) -> str:
        import nltk

        from policytune.dataset.wordnet import wordnet_version

        return f"WordNet {wordnet_version(self.cfg.wordnet_dir)} via nltk {nltk.__version__}"

    def _bases(self, word: str, pos: str) -> list[tuple[str, bool]]:
        """(base, inflected) pairs: ``word`` is the base itself, or its regular -s form (plural noun,
        3rd-person verb), which a single-word synonym can be given back by :func:`inflect_s`."""
        morphy = getattr(self.wn, "_morphy", None)
        bases = list(morphy(word, pos)) if morphy else [b for b in [self.wn.morphy(word, pos)] if b]
        out = []
        for b in dict.fromkeys(bases):
            if b == word:
                out.append((b, False))
            elif pos in ("n", "v") and inflect_s(b) == word:
                out.append((b, True))
        return out

    def _synonyms(self, word: str, pos_hint: str) -> tuple[str, ...]:
        wn = self.wn
        options = []  # (SemCor count, pos, base, inflected)
        for pos in ("n", "v", "a", "r"):
            if pos_hint and pos not in pos_hint:
                continue
            for base, inflected in self._bases(word, pos):
                lemmas = wn.lemmas(base, pos=pos)
                if lemmas:
                    options.append((sum(l.count() for l in lemmas), pos, base, inflected))
        if not options:
            return ()
        _, pos, base, inflected = max(options, key=lambda o: o[0])
        cands: dict[str, int] = {}
        for lemma in wn.lemmas(base, pos=pos)[: self.cfg.max_senses]:
            for other in lemma.synset().lemmas():
                name = other.name()
                low = name.lower()
                if low == base or (inflected and ("_" in name or "-" in name)):
                    continue
                if base in low or low in base:  # "submit" -> "submittal" adds nothing
                    continue
                cands[name] = max(cands.get(name, 0), other.count())
        seen = [n for n, c in cands.items() if c > 0]  # lemmas attested in SemCor read naturally
        names = seen or list(cands)
        return tuple(sorted((inflect_s(n) if inflected else n).replace("_", " ") for n in names))

    def in_collocation(self, words: list[str], i: int) -> bool:
        """Is words[i] part of a 2-3 word WordNet entry with its neighbours (a phrasal verb,
        compound noun, idiom)? Replacing one word of it would break the phrase."""
        for lo, hi in ((i - 1, i + 1), (i, i + 2), (i - 2, i + 1), (i - 1, i + 2), (i, i + 3)):
            if lo >= 0 and hi <= len(words) and self.is_lemma("_".join(words[lo:hi])):
                return True
        return False

    def pos_hint(self, prev: str, word: str) -> str:
        p = prev.lower()
        if p in _DETERMINERS:
            return "na"
        if p in _VERB_CUES:
            return "v"
        if word.lower().endswith("ly"):
            return "r"
        return ""

    def __call__(self, text: str, rng: random.Random) -> str:
        matches = list(SYN_WORD_RE.finditer(text))
        slots = []  # (match, synonyms)
        for i, m in enumerate(matches):
            w = m.group()
            lw = w.lower()
            if lw in STOPWORDS or len(w) < 3 or (len(w) > 1 and w.isupper()):
                continue
            sentence_start = not text[:m.start()].strip() or text[:m.start()].rstrip()[-1] in ".?!:;\"'("
            if w[0].isupper() and not sentence_start:  # a name ("European Union", "Lyon")
                continue
            if any(c.isupper() for c in w[1:]):  # "iPhone", "eIDAS"
                continue
            if text[m.end():m.end() + 1].isdigit() or text[max(0, m.start() - 1):m.start()].isdigit():
                continue
            if self.in_collocation([x.group().lower() for x in matches], i):  # "sign off", "data point"
                continue
            prev = matches[i - 1].group() if i > 0 else ""
            syns = self.synonyms(lw, self.pos_hint(prev, w))
            if syns:
                slots.append((m, syns))
        if not slots:
            return text
        k = max(1, round(self.cfg.rate * len(slots)))
        picked = sorted(rng.sample(range(len(slots)), k))
        out, last = [], 0
        for j in picked:
            m, syns = slots[j]
            new = rng.choice(syns)
            if m.group()[0].isupper():
                new = new[0].upper() + new[1:]
            out.append(text[last:m.start()])
            out.append(new)
            last = m.end()
        out.append(text[last:])
        return "".join(out)


# ---------------------------------------------------------------------------------------------
# back translation engines: translate_batch(texts) -> list of (text | None, reason)
# ---------------------------------------------------------------------------------------------

_APERTIUM_CODES = {"es": "spa", "fr": "fra", "ca": "cat", "pt": "por", "it": "ita", "de": "deu",
                   "gl": "glg", "eo": "epo", "nl": "nld", "ro": "ron"}
_WS = re.compile(r"\s+")
_SENT_END = re.compile(r"[.?!\u2026][\"'\u201d\u2019)\]]*$")


def _clean_line(text: str) -> str:
    return _WS.sub(" ", text).strip()


class ApertiumEngine:
    """``apertium -u eng-PIVOT`` then ``PIVOT-eng`` over many lines per call.

    Each text is one input line (inner whitespace collapsed); Apertium keeps line breaks, so
    output line i belongs to input line i. The line count is checked after each call; on a
    mismatch the batch is bisected down to single texts, and a text that still fails is
    reported as failed (counted), never shifted onto a neighbour.
    """

    name = "apertium"

    def __init__(self, cfg: BackTranslationConfig):
        self.cfg = cfg
        pivot = _APERTIUM_CODES.get(cfg.pivot, cfg.pivot)
        self.fwd, self.back = f"eng-{pivot}", f"{pivot}-eng"
        hint = f"apt-get install apertium apertium-eng-{pivot}"
        self.binary = shutil.which("apertium")
        if self.binary is None:
            raise EngineUnavailable(
                f"back_translation engine 'apertium': the apertium binary is not on PATH. "
                f"Install it with `{hint}` (Debian/Ubuntu), or choose another engine "
                f"(augment.back_translation.engine: google|teacher) or set weights.back_translation: 0")
        try:
            modes = subprocess.run([self.binary, "-l"], capture_output=True, text=True,
                                   timeout=30).stdout.split()
        except (OSError, subprocess.TimeoutExpired) as e:
            raise EngineUnavailable(f"back_translation engine 'apertium': `apertium -l` failed ({e}); "
                                    f"reinstall with `{hint}`") from None
        missing = [m for m in (self.fwd, self.back) if m not in modes]
        if missing:
            raise EngineUnavailable(
                f"back_translation engine 'apertium': language pair mode(s) {', '.join(missing)} "
                f"not installed (installed: {', '.join(modes) or 'none'}). Install with `{hint}`")

    def version(self) -> str:
        pkgs = ["apertium", f"apertium-{self.fwd}"]
        try:
            out = subprocess.run(["dpkg-query", "-W", "-f", "${Package} ${Version}\\n", *pkgs],
                                 capture_output=True, text=True, timeout=10).stdout.strip()
            if out:
                return "; ".join(out.splitlines())
        except (OSError, subprocess.TimeoutExpired):
            pass
        return "apertium (version unknown)"

    def _run(self, mode: str, lines: list[str]) -> list[str] | None:
        try:
            p = subprocess.run([self.binary, "-u", mode], input="\n".join(lines) + "\n",
                               capture_output=True, text=True, timeout=self.cfg.timeout_s)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"apertium {mode} took longer than {self.cfg.timeout_s}s for "
                               f"{len(lines)} lines (augment.back_translation.timeout_s)") from None
        if p.returncode != 0:
            raise RuntimeError(f"apertium {mode} exited {p.returncode}: {p.stderr.strip()[-500:]}")
        out = p.stdout.split("\n")
        if out and out[-1] == "":
            out.pop()
        return out if len(out) == len(lines) else None

    def _translate(self, mode: str, lines: list[str]) -> list[str | None]:
        if not lines:
            return []
        out = self._run(mode, lines)
        if out is not None:
            return out
        if len(lines) == 1:
            return [None]
        mid = len(lines) // 2
        log.warning("apertium %s: output lines out of step for a batch of %d; bisecting", mode, len(lines))
        return self._translate(mode, lines[:mid]) + self._translate(mode, lines[mid:])

    @staticmethod
    def _post(text: str) -> str:
        # -u drops '*' (unknown word); '#' (generation gap) and '@' (transfer gap) marks remain.
        return _clean_line(re.sub(r"(?<!\S)[#@](?=[^\W\d_])", "", text))

    def translate_batch(self, texts: Sequence[str]) -> list[tuple[str | None, str]]:
        results: list[tuple[str | None, str]] = []
        bs = max(1, self.cfg.batch_size)
        for start in range(0, len(texts), bs):
            lines = [_clean_line(t) for t in texts[start:start + bs]]
            # A line break is not a sentence break for Apertium: a line without final
            # punctuation would run into the next one (casing, even reordering), so the result
            # would depend on its batch neighbours. End each such line with " ." and drop it after.
            closed = [bool(_SENT_END.search(x)) for x in lines]
            todo = [i for i, x in enumerate(lines) if x]
            mid = dict(zip(todo, self._translate(self.fwd, [lines[i] if closed[i] else lines[i] + " ."
                                                             for i in todo])))
            ok = [i for i in todo if mid[i] is not None and mid[i].strip()]
            got: dict[int, str | None] = dict(zip(ok, self._translate(self.back, [mid[i] for i in ok])))
            for i in range(len(lines)):
                t = got.get(i)
                if not lines[i]:
                    results.append(("", ""))
                    continue
                if t is None:
                    results.append((None, "engine_misaligned"))
                    continue
                t = self._post(t)
                if not closed[i]:
                    t = re.sub(r"\s*\.$", "", t)
                results.append((t, ""))
        return results


def _call_with_timeout(fn: Callable[[], str], timeout_s: float) -> str:
    """Run ``fn`` in a daemon thread; raise TimeoutError if it has not finished in time.

    deep-translator calls requests without a timeout, so a blackholed network would hang the
    stage for minutes; a daemon thread cannot keep the process alive after we give up on it.
    """
    box: dict = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout_s)
    if t.is_alive():
        raise TimeoutError(f"no answer within {timeout_s}s")
    if "error" in box:
        raise box["error"]
    return box["value"]


class GoogleEngine:
    """Google Translate through deep-translator (needs network); one probe call checks reachability."""

    name = "google"

    def __init__(self, cfg: BackTranslationConfig):
        self.cfg = cfg
        try:
            from deep_translator import GoogleTranslator
        except ImportError:
            raise EngineUnavailable("back_translation engine 'google' needs the deep-translator package "
                                    "(pip install deep-translator==1.11.4)") from None
        proxies = {"https": cfg.google_proxy, "http": cfg.google_proxy} if cfg.google_proxy else None
        self.fwd = GoogleTranslator(source="en", target=cfg.pivot, proxies=proxies)
        self.back = GoogleTranslator(source=cfg.pivot, target="en", proxies=proxies)
        try:
            _call_with_timeout(lambda: self.fwd.translate("The policy applies to all employees."),
                               min(cfg.timeout_s, 15.0))
        except Exception as e:  # noqa: BLE001 - any failure here means "not reachable"
            raise EngineUnavailable(
                f"back_translation engine 'google' needs network access to translate.google.com "
                f"(deep-translator), and the probe request failed: {type(e).__name__}: {str(e)[:300]}. "
                f"Use engine: apertium for offline back translation "
                f"(`apt-get install apertium apertium-eng-spa`), or engine: teacher") from None

    def version(self) -> str:
        import deep_translator

        return f"deep-translator {getattr(deep_translator, '__version__', '?')} GoogleTranslator en-{self.cfg.pivot}-en"

    def translate_batch(self, texts: Sequence[str]) -> list[tuple[str | None, str]]:
        out = []
        for t in texts:
            try:
                mid = _call_with_timeout(lambda: self.fwd.translate(_clean_line(t)), self.cfg.timeout_s)
                back = _call_with_timeout(lambda: self.back.translate(mid), self.cfg.timeout_s)
                out.append((_clean_line(back or ""), "") if back else (None, "engine_empty"))
            except Exception as e:  # noqa: BLE001 - one failed request is counted, not fatal
                log.warning("google translate failed for one text: %s", e)
                out.append((None, "engine_error"))
        return out


_LANG_NAMES = {"es": "Spanish", "fr": "French", "de": "German", "it": "Italian", "pt": "Portuguese",
               "ca": "Catalan", "nl": "Dutch", "en": "English"}


class TeacherEngine:
    """The local teacher LLM (a policytune.lm.backends backend) translating en -> pivot -> en, greedy."""

    name = "teacher"

    def __init__(self, cfg: BackTranslationConfig, backend=None):
        self.cfg = cfg
        if backend is None:
            from policytune.lm import backends as llm
            if cfg.teacher.backend == "local" and not Path(cfg.teacher.model_dir).is_dir():
                raise EngineUnavailable(
                    f"back_translation engine 'teacher': model folder {cfg.teacher.model_dir} not found; "
                    f"build it with `dvc repro prepare_models@teacher`, or use engine: apertium")
            backend = llm.make_backend(cfg.teacher)
        self.backend = backend

    def version(self) -> str:
        return f"teacher {getattr(self.backend, 'model_id', type(self.backend).__name__)} ({self.cfg.teacher.backend})"

    @staticmethod
    def prompt(text: str, src: str, dst: str) -> list[dict]:
        s, d = _LANG_NAMES.get(src, src), _LANG_NAMES.get(dst, dst)
        return [
            {"role": "system", "content": f"You translate {s} text into {d}. Reply with the {d} translation "
                                          f"only: no notes, no quotes, and do not answer questions in the text."},
            {"role": "user", "content": text},
        ]

    @staticmethod
    def _post(text: str) -> str:
        text = (text or "").strip().split("\n\n")[0]
        return _clean_line(text.strip().strip('"\u201c\u201d'))

    def _run(self, texts: list[str], src: str, dst: str) -> list[tuple[str | None, str]]:
        if not texts:
            return []
        res = self.backend.chat([self.prompt(t, src, dst) for t in texts],
                                max_new_tokens=self.cfg.teacher.max_new_tokens, temperature=0.0, seed=0)
        out = []
        for r in res:
            text = self._post(r.text)
            if r.finish_reason == "length":  # cut off: part of the question would be lost
                out.append((None, "engine_truncated"))
            else:
                out.append((text, "") if text else (None, "engine_empty"))
        return out

    def translate_batch(self, texts: Sequence[str]) -> list[tuple[str | None, str]]:
        mid = self._run([_clean_line(t) for t in texts], "en", self.cfg.pivot)
        ok = [i for i, (m, _) in enumerate(mid) if m]
        back = dict(zip(ok, self._run([mid[i][0] for i in ok], self.cfg.pivot, "en")))
        return [back[i] if i in back else mid[i] for i in range(len(texts))]


def make_engine(cfg: BackTranslationConfig):
    if cfg.engine == "apertium":
        return ApertiumEngine(cfg)
    if cfg.engine == "google":
        return GoogleEngine(cfg)
    if cfg.engine == "teacher":
        return TeacherEngine(cfg)
    raise ParamsError(f"unknown back_translation engine {cfg.engine!r}")


# ---------------------------------------------------------------------------------------------
# the stage's pure core
# ---------------------------------------------------------------------------------------------

NUM_RE = re.compile(r"\d+(?:[.,:/]\d+)*")


def numbers_of(text: str) -> list[str]:
    return sorted(NUM_RE.findall(text))


def rebuild_messages(row: dict, question: str, answer: str) -> list[dict]:
    msgs = row.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise ValueError(f"train row {row.get('qa_id')!r} has no 'messages'; run the split stage first")
    out = [dict(m) for m in msgs]
    users = [i for i, m in enumerate(out) if m.get("role") == "user"]
    bots = [i for i, m in enumerate(out) if m.get("role") == "assistant"]
    if not users or not bots:
        raise ValueError(f"train row {row.get('qa_id')!r}: messages need a user and an assistant turn")
    out[users[-1]]["content"] = question
    out[bots[-1]]["content"] = answer
    return out


@dataclass
class Engines:
    synonym: Optional[Callable[[str, random.Random], str]] = None
    back_translation: object = None  # has translate_batch(texts) and name

    def versions(self) -> dict:
        v = {}
        if self.synonym is not None:
            v["synonym"] = self.synonym.version() if hasattr(self.synonym, "version") else "custom"
        if self.back_translation is not None:
            bt = self.back_translation
            v["back_translation"] = bt.version() if hasattr(bt, "version") else getattr(bt, "name", "custom")
        return v


def make_engines(cfg: AugmentConfig) -> Engines:
    """Build the engines that a positive weight asks for (errors name how to install them)."""
    weights = check_config(cfg)
    eng = Engines()
    if cfg.copies > 0 and weights["synonym"] > 0:
        eng.synonym = SynonymReplacer(cfg.synonym)
    if cfg.copies > 0 and weights["back_translation"] > 0:
        eng.back_translation = make_engine(cfg.back_translation)
    return eng


def augment_records(rows: Sequence[dict], cfg: AugmentConfig, engines: Engines,
                    timings: Optional[dict] = None) -> tuple[list[dict], list[dict], dict]:
    """Return (original + augmented rows, skipped manifest, stats) for the train rows."""
    weights = check_config(cfg)
    ops = [op for op in OPS if weights[op] > 0]
    for r in rows:
        if r.get("split", "train") != "train":
            raise ValueError(f"augment takes train rows only; row {r.get('qa_id')!r} has split {r.get('split')!r}")
    fields = ("question", "answer") if cfg.augment_answer else ("question",)

    plans = []  # one per (row, copy)
    for r in rows:
        for k in range(cfg.copies):
            seed = record_seed(cfg.seed, r["qa_id"], k)
            op = random.Random(seed).choices(ops, weights=[weights[o] for o in ops])[0]
            plans.append({"row": r, "copy": k, "seed": seed, "op": op, "new": {}, "reason": ""})
    timings = timings if timings is not None else {}

    def timed(op, fn):
        t0 = time.perf_counter()
        fn()
        timings[op] = timings.get(op, 0.0) + time.perf_counter() - t0

    local = {"char_delete": lambda t, rng: char_delete(t, rng, cfg.char),
             "char_swap": lambda t, rng: char_swap(t, rng, cfg.char),
             "synonym": engines.synonym}
    for op in ("synonym", "char_delete", "char_swap"):
        mine = [p for p in plans if p["op"] == op]
        if not mine:
            continue
        fn = local[op]
        if fn is None:
            raise EngineUnavailable(f"op {op} drawn but no engine was built for it")

        def run_local(mine=mine, fn=fn):
            for p in mine:
                for f in fields:
                    rng = random.Random(record_seed(cfg.seed, p["row"]["qa_id"], p["copy"], f))
                    p["new"][f] = fn(p["row"][f], rng)

        timed(op, run_local)

    bt_plans = [p for p in plans if p["op"] == "back_translation"]
    if bt_plans:
        if engines.back_translation is None:
            raise EngineUnavailable("op back_translation drawn but no engine was built for it")

        def run_bt():
            texts = [p["row"][f] for p in bt_plans for f in fields]
            res = iter(engines.back_translation.translate_batch(texts))
            for p in bt_plans:
                for f in fields:
                    text, reason = next(res)
                    if text is None:
                        p["reason"] = p["reason"] or reason
                    elif cfg.back_translation.keep_numbers and numbers_of(text) != numbers_of(p["row"][f]):
                        p["reason"] = p["reason"] or "numbers_changed"
                    p["new"][f] = text

        timed("back_translation", run_bt)

    bt_engine = getattr(engines.back_translation, "name", None)
    syn_engine = "wordnet" if engines.synonym is not None else None
    out, skipped = [], []
    augmented_by_op = {op: 0 for op in OPS}
    planned_by_op = {op: 0 for op in OPS}
    by_parent: dict[str, list[dict]] = {}
    for p in plans:
        by_parent.setdefault(p["row"]["qa_id"], []).append(p)
    for r in rows:
        out.append({**r, "augmentation": None})  # same keys on every row (one schema for readers)
        emitted = {(r["question"], r["answer"])}
        for p in by_parent.get(r["qa_id"], []):
            planned_by_op[p["op"]] += 1
            q = p["new"].get("question", r["question"])
            a = p["new"].get("answer", r["answer"]) if cfg.augment_answer else r["answer"]
            reason = p["reason"]
            if not reason and (not (q or "").strip() or not (a or "").strip()):
                reason = "empty"
            if not reason and (q, a) == (r["question"], r["answer"]):
                reason = "unchanged"
            if not reason and (q, a) in emitted:
                reason = "duplicate_copy"
            if reason:
                skipped.append({"parent_qa_id": r["qa_id"], "copy": p["copy"], "op": p["op"],
                                "seed": p["seed"], "reason": reason})
                continue
            emitted.add((q, a))
            engine = bt_engine if p["op"] == "back_translation" else syn_engine if p["op"] == "synonym" else None
            row = {k: v for k, v in r.items() if k not in ("messages", "augmentation")}
            row.update({
                "qa_id": stable_id("augment", r["qa_id"], p["copy"], p["op"], p["seed"]),
                "question": q,
                "answer": a,
                "split": "train",
                "augmentation": {"op": p["op"], "seed": p["seed"], "parent_qa_id": r["qa_id"],
                                 "engine": engine, "copy": p["copy"], "fields": list(fields)},
                "messages": rebuild_messages(r, q, a),
            })
            out.append(row)
            augmented_by_op[p["op"]] += 1

    skipped_by_reason: dict[str, int] = {}
    for s in skipped:
        skipped_by_reason[s["reason"]] = skipped_by_reason.get(s["reason"], 0) + 1
    stats = {
        "rows_in": len(rows),
        "rows_out": len(out),
        "copies": cfg.copies,
        "augmented": sum(augmented_by_op.values()),
        "planned_by_op": planned_by_op,
        "augmented_by_op": augmented_by_op,
        "skipped": len(skipped),
        "skipped_by_reason": skipped_by_reason,
        "augment_answer": cfg.augment_answer,
        "engines": engines.versions(),
    }
    return out, skipped, stats


# ---------------------------------------------------------------------------------------------
# I/O
# ---------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params", default=None, help="params.yaml path (default: ./params.yaml)")
    ap.add_argument("--input", default=str(TRAIN_PATH))
    ap.add_argument("--output", default=str(OUT_PATH))
    ap.add_argument("--skipped", default=str(SKIPPED_PATH))
    ap.add_argument("--stats", default=str(STATS_PATH))
    args = ap.parse_args(argv)
    cfg = load_section(AugmentConfig, "augment", args.params)

    if not Path(args.input).is_file():
        raise SystemExit(f"augment: {args.input} not found; run the split stage first")
    rows = read_jsonl(args.input)
    try:
        engines = make_engines(cfg)
    except EngineUnavailable as e:
        raise SystemExit(f"augment: {e}") from None
    log.info("augmenting %d train rows x %d copies (weights %s, engines %s)",
             len(rows), cfg.copies, cfg.weights, engines.versions())
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    out, skipped, stats = augment_records(rows, cfg, engines, timings)
    for op, secs in sorted(timings.items()):
        n = stats["planned_by_op"].get(op, 0)
        log.info("%s: %d rows in %.2fs (%.1f rows/s)", op, n, secs, n / secs if secs > 0 else float("inf"))
    write_jsonl(args.output, out)
    write_jsonl(args.skipped, skipped)
    write_json(args.stats, stats)
    log.info("wrote %d rows (%d augmented, %d skipped: %s) in %.1fs", stats["rows_out"], stats["augmented"],
             stats["skipped"], stats["skipped_by_reason"], time.perf_counter() - t0)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
