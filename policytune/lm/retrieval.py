"""Retrieval over ``data/chunks.jsonl``: one index for the evaluate stage's RAG variants, the RAFT
training rows and the chatbot, so a question finds the same excerpts in all three.

Two methods:

- ``dense``: cosine of the encoder's unit vectors (all-MiniLM-L6-v2 by default);
- ``hybrid`` (the default): the dense ranking and a BM25 ranking (``rank_bm25.BM25Okapi``) fused
  by reciprocal rank (Cormack et al. 2009: score = sum of 1 / (rrf_k + rank), rrf_k = 60). BM25
  finds what a small encoder blurs: form codes (HR-17), amounts, role names. Measured on the
  sample FAQ (30 questions, source chunk known): recall@3 0.867 dense over bare chunk text,
  0.900 dense over the searchable text below, 0.933 hybrid.

Both search a chunk's *searchable text*: the document title (without a trailing " | site name"),
the section heading and the chunk text, so a chunk that says "up to 3 days a week" is found by
a question about remote work even when its own words do not say so. The excerpt put into a
prompt is the chunk text alone (see :func:`policytune.lm.chat_format.rag_question`).
"""

from __future__ import annotations

import re
from typing import Callable, Literal, Optional, Sequence

import numpy as np

Method = Literal["hybrid", "dense"]
METHODS = ("hybrid", "dense")
RRF_K = 60

# BM25 tokens: a CJK / kana / hangul character is a token on its own (no spaces between words),
# anything else is a run of word characters, lower-cased.
_TOKEN_RE = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]|\w+")
_SITE_SUFFIX_RE = re.compile(r"\s+[|\u2013\u2014]\s+[^|\u2013\u2014]*$")


def tokens(text: str) -> list[str]:
    return _TOKEN_RE.findall(str(text).lower())


def searchable_text(chunk: dict) -> str:
    """Title (site suffix cut), heading and text of a chunk: what both rankings compare with."""
    title = _SITE_SUFFIX_RE.sub("", str(chunk.get("title") or "")).strip()
    heading = str(chunk.get("heading") or "").strip()
    parts = [p for p in (title, heading) if p and p not in str(chunk.get("text", ""))[:len(p) + 40]]
    return "\n".join([*parts, str(chunk.get("text", ""))])


def _ranks(scores: np.ndarray) -> np.ndarray:
    """Rank of every document per query row (0 = best; ties: the earlier document first)."""
    order = np.argsort(-scores, axis=1, kind="stable")
    ranks = np.empty_like(order)
    rows = np.arange(scores.shape[0])[:, None]
    ranks[rows, order] = np.arange(scores.shape[1])[None, :]
    return ranks


class ChunkIndex:
    """Chunks searchable by question. ``embed``: texts -> (n, d) unit rows (the encoder)."""

    def __init__(self, chunks: Sequence[dict], embed: Callable[[Sequence[str]], object],
                 method: Method = "hybrid", rrf_k: int = RRF_K):
        if method not in METHODS:
            raise ValueError(f"retrieval method must be one of {', '.join(METHODS)}, got {method!r}")
        self.chunks, self.embed, self.method, self.rrf_k = list(chunks), embed, method, rrf_k
        texts = [searchable_text(c) for c in self.chunks]
        self.embeddings = np.asarray(embed(texts)) if self.chunks else np.zeros((0, 1))
        self.bm25 = None
        if method == "hybrid" and self.chunks:
            from rank_bm25 import BM25Okapi

            docs = [tokens(t) or ["\x00"] for t in texts]  # BM25Okapi divides by the mean length
            self.bm25 = BM25Okapi(docs)

    def cosines(self, questions: Sequence[str]) -> np.ndarray:
        """(questions, chunks) encoder cosines."""
        return np.atleast_2d(np.asarray(self.embed(list(questions)))) @ self.embeddings.T

    def search(self, questions: Sequence[str], k: int, cosines: Optional[np.ndarray] = None) -> list[list[int]]:
        """Indices of the ``k`` best chunks per question, best first. ``cosines``: the questions'
        :meth:`cosines` when the caller already has them (the chatbot shows them as scores), so
        the questions are not encoded twice."""
        if not questions:
            return []
        k = min(k, len(self.chunks))
        if k <= 0:
            return [[] for _ in questions]
        scores = self.cosines(questions) if cosines is None else np.atleast_2d(cosines)
        if scores.shape != (len(questions), len(self.chunks)):
            raise ValueError(f"cosines has shape {scores.shape}, expected {(len(questions), len(self.chunks))}")
        if self.bm25 is not None:
            bm = np.array([self.bm25.get_scores(tokens(q) or ["\x00"]) for q in questions], dtype=float)
            scores = 1.0 / (self.rrf_k + 1 + _ranks(scores)) + 1.0 / (self.rrf_k + 1 + _ranks(bm))
        return [list(map(int, np.argsort(-row, kind="stable")[:k])) for row in scores]
