"""Top-k retrieval by cosine: best first, ties keep the earlier document, k capped."""

from __future__ import annotations

import numpy as np

from policytune.lm.embedding import top_k


def test_top_k_order_ties_and_cap():
    docs = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.6, 0.8]])
    q = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert top_k(q, docs, 2) == [[0, 2], [1, 3]]
    assert top_k(q[0], docs, 10) == [[0, 2, 3, 1]]
