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
- the answer is the row's reference answer, unchanged; the system message is the row's own.

With ``answers: self`` an oracle row's answer is the base student's own greedy
answer to that row's prompt, when it states every key fact of the teacher's answer (amounts,
deadlines, forms, roles) and ends on its own; otherwise the teacher's answer stays
(:func:`self_distill`, counted): self-distillation (Yang et al. 2024, arXiv:2402.13669), meant to
keep the student's own style where the teacher's one-sentence targets made the fine-tuned
student terser than the base model. Measured on the sample FAQ it did not help (46 of 106
oracle rows took the student's answer; fine-tuned + RAG minus base + RAG -0.214 fact recall,
against -0.161 with the teacher's answers), so the default is ``teacher``.

With ``closed_book`` the original closed-book row is kept beside its RAFT row, so the model also
learns to answer without excerpts. Rows without a source chunk (or whose chunk is not in
data/chunks.jsonl) stay closed-book and are counted. Augmented copies (``augmentation`` set) get
a RAFT row only with ``augmented_rows: true``: each RAFT row costs hundreds of prompt tokens.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Annotated, Callable, Literal, Sequence

from policytune.core.params import NonNegInt, PositiveInt, Range
from policytune.lm.chat_format import DEFAULT_SYSTEM_PROMPT, rag_question, to_messages
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
    answers: Literal["self", "teacher"] = field(default="teacher", metadata={
        "help": "self: an oracle row's answer is the base student's own answer to its prompt when that states "
                "every key fact of the teacher's answer (else the teacher's); teacher: always the teacher's"})
    self_max_new_tokens: PositiveInt = field(default=128, metadata={
        "help": "generation limit of the student's own answers (= evaluate.max_new_tokens)"})
    self_batch_size: PositiveInt = field(default=32, metadata={"help": "prompts decoded together (continuous batching)"})
    max_rows: NonNegInt = field(default=0, metadata={
        "help": "cap on RAFT rows per file (0 = no cap; the first ones by qa_id hash are kept)"})
    seed: int = field(default=42, metadata={"help": "seed of the oracle draw and of the gold slot"})


def _rng(seed: int, key: str) -> random.Random:
    """A random stream that depends only on (seed, key): rows do not shift when others change."""
    h = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return random.Random(int.from_bytes(h[:8], "big"))


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
              "gold_retrieved": 0, "no_source_chunk": 0, "augmented_skipped": 0, "capped": 0}
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
        out.append({**r, "qa_id": f"{r.get('qa_id')}-raft",
                    "raft": {"parent_qa_id": r.get("qa_id"), "oracle": oracle,
                             "contexts": [chunks[j].get("chunk_id") for j in ctx],
                             "gold_slot": ctx.index(gold) if gold in ctx else None},
                    "messages": to_messages(rag_question(q, texts), _answer(r), system=_system(r))})
    return out


def self_distill(rows: list[dict], answer: Callable[[list[list[dict]]], list[dict]],
                 accept: Callable[[str, str], bool]) -> tuple[list[dict], dict]:
    """(rows, counts): each oracle RAFT row whose prompt the student answers acceptably gets that
    answer as its assistant turn (``raft.answer_source`` "self", the teacher's kept in
    ``raft.teacher_answer``); every other row is unchanged.

    ``answer``: prompts (messages without the assistant turn) -> [{answer, finish}] in order;
    ``accept(student_answer, teacher_answer)``: the answer may replace the teacher's. An answer
    that hit the generation limit (``finish`` != "eos") or is empty is never taken."""
    idx = [i for i, r in enumerate(rows) if (r.get("raft") or {}).get("oracle")]
    counts = {"self_answers": 0, "teacher_answers": 0, "self_truncated": 0}
    if not idx:
        return list(rows), counts
    outs = answer([rows[i]["messages"][:-1] for i in idx])
    if len(outs) != len(idx):
        raise ValueError(f"the student gave {len(outs)} answers to {len(idx)} prompts")
    out = list(rows)
    for i, o in zip(idx, outs):
        teacher, mine = _answer(rows[i]), str(o.get("answer") or "").strip()
        if o.get("finish") != "eos":
            counts["self_truncated"] += 1
        if mine and o.get("finish") == "eos" and accept(mine, teacher):
            out[i] = {**rows[i], "messages": [*rows[i]["messages"][:-1], {"role": "assistant", "content": mine}],
                      "raft": {**rows[i]["raft"], "answer_source": "self", "teacher_answer": teacher}}
            counts["self_answers"] += 1
        else:
            out[i] = {**rows[i], "raft": {**rows[i]["raft"], "answer_source": "teacher"}}
            counts["teacher_answers"] += 1
    return out, counts
