"""Retrieval-augmented prompts: the top-k chunks (:class:`policytune.lm.retrieval.ChunkIndex`,
hybrid dense + BM25 by default), put before the question (the prompt layout is
:func:`policytune.lm.chat_format.rag_question`, shared with RAFT training and the chatbot).

The excerpts are page text, so they go into the prompt as DATA between <excerpt> and
</excerpt> tags (the way generate_qa's teacher prompt fences its chunk): anything inside an
excerpt that could open or close that tag is neutralised, and the prompt says, outside the
excerpts, that instructions inside them are never to be followed. The question is the user's.
"""

from __future__ import annotations

from typing import Sequence

from policytune.evaluation.config import EvaluateError
from policytune.lm.chat_format import RAG_INSTRUCTION, excerpt_as_data, rag_question  # noqa: F401 (the shared layout)
from policytune.lm.embedding import encode
from policytune.lm.retrieval import ChunkIndex


def retrieve(questions: Sequence[str], chunks: Sequence[dict], encoder, top_k: int,
             method: str = "hybrid") -> list[list[int]]:
    """Indices of the top-k chunks per question, best first (ties: earlier chunk first)."""
    if not chunks:
        raise EvaluateError("RAG is enabled but data/chunks.jsonl has no chunks")
    index = ChunkIndex(chunks, lambda texts: encode(encoder, texts, batch_size=64), method)
    return index.search(questions, top_k)
