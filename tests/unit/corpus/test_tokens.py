"""corpus.tokens: the regex token approximation."""

from __future__ import annotations

from policytune.corpus.tokens import count_tokens, tokenize


def test_tokenizer():
    text = "Don't e-mail 3.5% of €1,000 (U.S.) 人工知能."
    toks = [text[a:b] for a, b in tokenize(text)]
    assert toks == ["Don't", "e-mail", "3.5", "%", "of", "€", "1,000", "(", "U.S", ".", ")",
                    "人", "工", "知", "能", "."]
    assert count_tokens(text) == len(toks)
