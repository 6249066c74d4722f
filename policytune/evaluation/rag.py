"""Retrieval-augmented prompts: the top-k chunks by encoder cosine, put before the question
(the prompt layout is :func:`policytune.lm.chat_format.rag_question`, shared with RAFT training).

The excerpts are page text, so they go into the prompt as DATA between <excerpt> and
</excerpt> tags (the way generate_qa's teacher prompt fences its chunk): anything inside an
excerpt that could open or close that tag is neutralised, and the prompt says, outside the
excerpts, that instructions inside them are never to be followed. The question is the user's.
"""

from __future__ import annotations

from typing import Sequence

from policytune.evaluation.config import EvaluateError
from policytune.lm.chat_format import RAG_INSTRUCTION, excerpt_as_data, rag_question  # noqa: F401 (the shared layout)
from policytune.lm.embedding import encode, top_k as _top_k


def retrieve(questions: Sequence[str], chunks: Sequence[dict], encoder, top_k: int) -> list[list[int]]:
    """Indices of the top-k chunks per question by encoder cosine (ties: earlier chunk first)."""
    if not chunks:
        raise EvaluateError("RAG is enabled but data/chunks.jsonl has no chunks")
    q = encode(encoder, questions)
    c = encode(encoder, [ch["text"] for ch in chunks], batch_size=64)
    return _top_k(q, c, top_k)
