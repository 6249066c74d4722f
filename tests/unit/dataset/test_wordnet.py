"""wordnet: the offline nltk WordNet folder built from the system's WordNet files."""

from __future__ import annotations

import pytest

from tests.helpers.augment_rows import HAVE_WORDNET


def test_wordnet_folder_is_built_offline(tmp_path):
    if not HAVE_WORDNET:
        pytest.skip("needs wordnet-base")
    from policytune.dataset.wordnet import LEXNAMES, ensure_nltk_wordnet

    root = ensure_nltk_wordnet(tmp_path / "nd") / "corpora" / "wordnet"
    lines = (root / "lexnames").read_text().splitlines()
    assert len(lines) == 45 and lines[0].split() == ["00", "adj.all", "3"] and lines == LEXNAMES.splitlines()
    assert (tmp_path / "nd" / ".gitignore").read_text() == "*\n"
    assert not any(p.is_symlink() for p in root.iterdir())

