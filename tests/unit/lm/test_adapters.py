"""policytune.lm.adapters: the adapter folder's train record is checked against the base
tokenizer's chat template; a missing adapter or another template stops with a fix."""

from __future__ import annotations

import json
import shutil

import pytest

from policytune.lm.adapters import TRAIN_INFO, AdapterError, check_adapter, load_tok
from policytune.lm.chat_format import template_sha


@pytest.fixture(scope="session")
def tok(tiny_dir):
    return load_tok(tiny_dir)


def test_adapter_guards(adapter_dir, tok, tmp_path):
    assert check_adapter(adapter_dir, tok)["chat_template_sha"] == template_sha(tok)
    bad = tmp_path / "bad"
    shutil.copytree(adapter_dir, bad)
    (bad / TRAIN_INFO).write_text(json.dumps({"chat_template_sha": "0123456789abcdef"}))
    with pytest.raises(AdapterError, match="chat template mismatch"):
        check_adapter(bad, tok)
    with pytest.raises(AdapterError, match="run the train stage"):
        check_adapter(tmp_path / "nothing", tok)
