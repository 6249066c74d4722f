"""The encoder role as functions: texts -> L2-normalised embeddings, and top-k retrieval by
cosine over chunk embeddings (used by generate_qa's grounding gate and near-duplicate check,
split's near-duplicate guard, evaluate's RAG variants and the chatbot's retrieval)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, Sequence

Embed = Callable[[Sequence[str]], Any]  # texts -> (n, d) array of L2-normalised rows


def encode(encoder, texts: Sequence[str], batch_size: int = 32):
    """(n, d) float array of unit vectors (sentence-transformers ``encode``)."""
    return encoder.encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                          convert_to_numpy=True, show_progress_bar=False)


def load_embedder(encoder_dir: str | Path, device: Optional[str] = None, batch_size: int = 64) -> Embed:
    """The prepared encoder folder as a texts -> unit vectors function (raises
    :class:`policytune.lm.catalog.ModelSourceError` or OSError when it cannot be loaded)."""
    from policytune.lm.loading import load_encoder

    model = load_encoder(encoder_dir, device=device)

    def embed(texts: Sequence[str]):
        return encode(model, texts, batch_size=batch_size)
    return embed


def top_k(query_emb, doc_emb, k: int) -> list[list[int]]:
    """Indices of the ``k`` most similar rows of ``doc_emb`` for each row of ``query_emb``
    (cosine of unit vectors; ties: the earlier document first)."""
    import numpy as np

    sims = np.atleast_2d(query_emb) @ np.asarray(doc_emb).T
    k = min(k, sims.shape[1])
    return [list(np.argsort(-row, kind="stable")[:k]) for row in sims]
