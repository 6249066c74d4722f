"""The text mechanisms of the augment stage: per-copy seeds, the character ops (letter deletion,
neighbour swap inside words) and WordNet synonym replacement.

Every op is ``op(text, rng) -> text`` with a ``random.Random`` seeded by :func:`record_seed`, so
one row's copy never depends on another row.
"""

from __future__ import annotations

import functools
import random
import re
from dataclasses import dataclass, field
from typing import Callable

from policytune.core.params import Fraction, NonNegInt, PositiveInt
from policytune.core.records import stable_id
from policytune.dataset.translate import EngineUnavailable


@dataclass
class SynonymConfig:
    rate: Fraction = field(default=0.15, metadata={
        "help": "fraction of the words that have WordNet synonyms to replace (at least one)"})
    max_senses: PositiveInt = field(default=2, metadata={
        "help": "take synonyms from the word's N most frequent senses only"})
    wordnet_dir: str = field(default="/usr/share/wordnet", metadata={
        "help": "WordNet 3.0 dict folder (Debian wordnet-base + wordnet-sense-index)"})
    nltk_data: str = field(default=".cache/nltk_data", metadata={
        "help": "cache folder where the nltk WordNet corpus is assembled (NLTK_DATA)"})


@dataclass
class CharConfig:
    word_p: Fraction = field(default=0.3, metadata={"help": "probability that an eligible word is altered (at least one word)"})
    char_p: Fraction = field(default=0.1, metadata={
        "help": "in an altered word, probability of each further edit beyond the first"})
    min_word_len: NonNegInt = field(default=4, metadata={"help": "shorter words are never altered"})


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

SYNONYM_STOPWORDS = frozenset("""
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
            if lw in SYNONYM_STOPWORDS or len(w) < 3 or (len(w) > 1 and w.isupper()):
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
# numbers (back translation must keep them)
# ---------------------------------------------------------------------------------------------

NUM_RE = re.compile(r"\d+(?:[.,:/]\d+)*")


def numbers_of(text: str) -> list[str]:
    return sorted(NUM_RE.findall(text))
