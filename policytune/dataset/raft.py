"""Retrieval-augmented fine-tuning rows (RAFT, Zhang et al. 2024, arXiv:2403.10131).

Plain closed-book QA fine-tuning teaches a student to answer without reading: measured on the
sample FAQ, Qwen2.5-Coder-0.5B with the top-3 chunks in the prompt fell from 0.51 to 0.33 of the
reference's facts after one epoch of it. RAFT trains on the layout the model is asked in at
inference: the user turn carries retrieved excerpts, built by the same function
(:func:`policytune.lm.chat_format.rag_question`) the evaluate stage and the chatbot use.

For each train (and val) row that has a source chunk:

- the row's question retrieves the ``top_k`` best chunks with the evaluate stage's retriever
  (:class:`policytune.lm.retrieval.ChunkIndex`, same method), so distractors are the hard ones
  a real question meets, not random text;
- with probability ``oracle_share`` (a pure function of ``seed`` and the row's qa_id) the row is
  an *oracle* row: its gold chunk is among the excerpts -- where retrieval ranked it when it is
  in the top-k, else at a random slot in place of a distractor; otherwise it is a *distractor*
  row: ``top_k`` chunks without the gold one, and the model must answer from what it learned
  (RAFT's (1 - P) share, which keeps closed-book recall alive);
- the answer is the row's reference answer; with ``quote`` (the default), an oracle row's answer
  is followed by a line ``Source: "..."`` quoting the gold chunk's sentence(s) that state the
  answer's facts (:func:`supporting_quote`), the chain-of-thought-with-quotes of the RAFT paper
  cut to what a user reads: an answer and the policy sentence it rests on. The instruction in
  the prompt asks for that line, so the base model is asked the same. Distractor-only rows
  (no gold excerpt) and closed-book rows answer without it; the system message is the row's own.

With ``closed_book`` the original closed-book row is kept beside its RAFT row, so the model also
learns to answer without excerpts. Rows without a source chunk (or whose chunk is not in
data/chunks.jsonl) stay closed-book and are counted. Augmented copies (``augmentation`` set) get
a RAFT row only with ``augmented_rows: true``: each RAFT row costs hundreds of prompt tokens.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass, field
from typing import Annotated, Callable, Literal, Sequence

from policytune.core.params import NonNegInt, PositiveInt, Range
from policytune.core.facts import extract_facts, fact_scores
from policytune.lm.chat_format import DEFAULT_SYSTEM_PROMPT, rag_question, to_messages, with_source
from policytune.lm.retrieval import ChunkIndex


@dataclass
class RaftConfig:
    enabled: bool = field(default=True, metadata={
        "help": "false: the rows pass through unchanged (closed-book training only)"})
    top_k: PositiveInt = field(default=3, metadata={
        "help": "excerpts per RAFT row; keep equal to evaluate.rag.top_k (the layout asked at inference)"})
    max_chars: PositiveInt = field(default=1500, metadata={
        "help": "each excerpt cut to this many characters; keep equal to evaluate.rag.max_chars"})
    retriever: Literal["hybrid", "dense"] = field(default="hybrid", metadata={
        "help": "keep equal to evaluate.rag.retriever (policytune/lm/retrieval.py)"})
    oracle_share: Annotated[float, Range(ge=0, le=1)] = field(default=0.8, metadata={
        "help": "share of RAFT rows whose gold chunk is among the excerpts (RAFT's P)"})
    closed_book: bool = field(default=True, metadata={
        "help": "keep each closed-book row beside its RAFT row"})
    augmented_rows: bool = field(default=False, metadata={
        "help": "also build RAFT rows from augmented copies (more prompt tokens per epoch)"})
    quote: bool = field(default=True, metadata={
        "help": "oracle rows answer, then quote the gold chunk's supporting sentence on a 'Source:' line"})
    max_rows: NonNegInt = field(default=0, metadata={
        "help": "cap on RAFT rows per file (0 = no cap; the first ones by qa_id hash are kept)"})
    seed: int = field(default=42, metadata={"help": "seed of the oracle draw and of the gold slot"})


def _rng(seed: int, key: str) -> random.Random:
    """A random stream that depends only on (seed, key): rows do not shift when others change."""
    h = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return random.Random(int.from_bytes(h[:8], "big"))


_SENTENCE_END_RE = re.compile(r"(?<=[.!?;])\s+(?=\S)")
_WORD_RE = re.compile(r"\w{3,}")
MAX_QUOTE_SENTENCE = 400


def sentences(text: str) -> list[str]:
    """The sentences of a chunk: its lines (a table row is one), split after . ! ? ;"""
    return [s.strip() for line in str(text).splitlines() for s in _SENTENCE_END_RE.split(line) if len(s.strip()) >= 3]


def _word_share(sentence: str, answer_words: set[str]) -> float:
    """Share of the answer's words (3+ letters, lower-cased) that the sentence contains."""
    return len(answer_words & set(_WORD_RE.findall(sentence.lower()))) / len(answer_words) if answer_words else 0.0


def supporting_quote(answer: str, chunk_text: str, max_sentences: int = 2, min_overlap: float = 0.5) -> str | None:
    """The chunk sentence(s) that state the answer's key facts (amounts, deadlines, forms, roles:
    :mod:`policytune.core.facts`), in chunk order: the best one by (facts stated, share of the
    answer's words), then one more if it states facts the first does not. None when no sentence
    states a fact of the answer and none holds ``min_overlap`` of its words (not in the chunk)."""
    facts = [f.text for f in extract_facts(answer)]
    words = set(_WORD_RE.findall(answer.lower()))
    cands = []
    for i, s in enumerate(sentences(chunk_text)):
        if len(s) > MAX_QUOTE_SENTENCE:
            continue
        missing = set(fact_scores(s, answer)["missing"]) if facts else set()
        cands.append((i, s, {f for f in facts if f not in missing}, _word_share(s, words)))
    if not cands:
        return None
    best = max(cands, key=lambda c: (len(c[2]), c[3], -c[0]))
    if not best[2] and best[3] < min_overlap:
        return None
    chosen = [best]
    while len(chosen) < max_sentences:
        left = set(facts) - set().union(*(c[2] for c in chosen))
        extra = max((c for c in cands if c not in chosen), key=lambda c: (len(c[2] & left), c[3], -c[0]), default=None)
        if extra is None or not extra[2] & left:
            break
        chosen.append(extra)
    chosen.sort(key=lambda c: c[0])
    out = chosen[0][1]
    for prev, c in zip(chosen, chosen[1:]):
        out += (" " if c[0] == prev[0] + 1 else " \u2026 ") + c[1]
    return out


def choose_contexts(ranked: Sequence[int], gold: int, k: int, oracle: bool, rng: random.Random) -> list[int]:
    """Chunk indices of one RAFT row from the retrieval ranking (best first).

    Oracle: the top-k, with the gold chunk kept at its rank when retrieved, else put at a random
    slot in place of a distractor. Distractor row: the top-k chunks other than the gold one."""
    others = [j for j in ranked if j != gold]
    if not oracle:
        return others[:k]
    top = list(ranked[:k])
    if gold in top:
        return top
    ctx = others[:k - 1]
    ctx.insert(rng.randrange(len(ctx) + 1), gold)
    return ctx


def user_question(row: dict) -> str:
    """The question of a chat row (its user turn), else its ``question`` field."""
    for m in row.get("messages") or []:
        if isinstance(m, dict) and m.get("role") == "user" and isinstance(m.get("content"), str):
            return m["content"]
    return str(row.get("question", ""))


def _system(row: dict) -> str:
    """The row's own system message (split wrote it), so RAFT and closed-book rows share it."""
    for m in row.get("messages") or []:
        if isinstance(m, dict) and m.get("role") == "system" and isinstance(m.get("content"), str):
            return m["content"]
    return DEFAULT_SYSTEM_PROMPT


def _answer(row: dict) -> str:
    for m in reversed(row.get("messages") or []):
        if isinstance(m, dict) and m.get("role") == "assistant" and isinstance(m.get("content"), str):
            return m["content"]
    return str(row.get("answer", ""))


def build_rows(rows: Sequence[dict], chunks: Sequence[dict], embed: Callable[[Sequence[str]], object],
               cfg: RaftConfig, what: str = "train") -> tuple[list[dict], dict]:
    """(output rows, counts): RAFT rows (and, with ``closed_book``, the closed-book rows)."""
    counts = {"rows_in": len(rows), "raft_rows": 0, "oracle_rows": 0, "distractor_rows": 0,
              "gold_retrieved": 0, "quoted": 0, "no_quote": 0, "no_source_chunk": 0, "augmented_skipped": 0, "capped": 0}
    if not cfg.enabled:
        return list(rows), {**counts, "rows_out": len(rows)}
    index = {c.get("chunk_id"): i for i, c in enumerate(chunks)}
    eligible = []
    for r in rows:
        if r.get("augmentation") and not cfg.augmented_rows:
            counts["augmented_skipped"] += 1
        elif r.get("chunk_id") not in index:
            counts["no_source_chunk"] += 1
        else:
            eligible.append(r)
    if cfg.max_rows and len(eligible) > cfg.max_rows:
        eligible = sorted(eligible, key=lambda r: hashlib.sha256(f"{cfg.seed}:{r.get('qa_id')}".encode()).hexdigest())
        counts["capped"] = len(eligible) - cfg.max_rows
        eligible = eligible[:cfg.max_rows]
    raft = {id(r): x for r, x in zip(eligible, _raft_rows(eligible, chunks, index, embed, cfg, counts))}
    out = []
    for r in rows:
        if cfg.closed_book or id(r) not in raft:
            out.append(r)
        if id(r) in raft:
            out.append(raft[id(r)])
    counts["rows_out"] = len(out)
    return out, counts


def _raft_rows(rows: list[dict], chunks: Sequence[dict], index: dict, embed, cfg: RaftConfig,
               counts: dict) -> list[dict]:
    if not rows:
        return []
    questions = [user_question(r) for r in rows]
    ranked = ChunkIndex(chunks, embed, cfg.retriever).search(questions, cfg.top_k + 1)
    out = []
    for r, q, rank in zip(rows, questions, ranked):
        rng = _rng(cfg.seed, str(r.get("qa_id")))
        gold = index[r["chunk_id"]]
        oracle = rng.random() < cfg.oracle_share
        ctx = choose_contexts([int(j) for j in rank], gold, cfg.top_k, oracle, rng)
        counts["raft_rows"] += 1
        counts["oracle_rows" if oracle else "distractor_rows"] += 1
        counts["gold_retrieved"] += int(gold in rank[:cfg.top_k])
        texts = [chunks[j]["text"][:cfg.max_chars] for j in ctx]
        answer, quote = _answer(r), None
        if cfg.quote and oracle:
            quote = supporting_quote(answer, texts[ctx.index(gold)])
            counts["quoted" if quote else "no_quote"] += 1
        out.append({**r, "qa_id": f"{r.get('qa_id')}-raft",
                    "raft": {"parent_qa_id": r.get("qa_id"), "oracle": oracle,
                             "contexts": [chunks[j].get("chunk_id") for j in ctx],
                             "gold_slot": ctx.index(gold) if gold in ctx else None, "quote": quote},
                    "messages": to_messages(rag_question(q, texts), with_source(answer, quote), system=_system(r))})
    return out
