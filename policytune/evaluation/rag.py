"""Retrieval-augmented prompts: the top-k chunks by encoder cosine, put before the question."""

from __future__ import annotations

from typing import Sequence

from policytune.evaluation.config import EvaluateError
from policytune.lm.embedding import encode, top_k as _top_k


def rag_question(question: str, contexts: Sequence[str]) -> str:
    ctx = "\n\n".join(f"[{i}] {c}" for i, c in enumerate(contexts, 1))
    return (f"Use the policy excerpts below to answer the question.\n\nExcerpts:\n{ctx}\n\n"
            f"Question: {question}")


def retrieve(questions: Sequence[str], chunks: Sequence[dict], encoder, top_k: int) -> list[list[int]]:
    """Indices of the top-k chunks per question by encoder cosine (ties: earlier chunk first)."""
    if not chunks:
        raise EvaluateError("RAG is enabled but data/chunks.jsonl has no chunks")
    q = encode(encoder, questions)
    c = encode(encoder, [ch["text"] for ch in chunks], batch_size=64)
    return _top_k(q, c, top_k)
