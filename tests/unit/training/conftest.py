"""Fixtures of the training library tests: the tiny Llama the train tests use (not the shared
``tiny_model_dir`` of tests/conftest.py: its tokenizer is transformers' GGUF conversion), its
tokenizer as the train stage loads it, and the QA pairs encoded."""

from __future__ import annotations

from pathlib import Path

import pytest

from policytune.training.encode import encode_rows
from policytune.training.lora import load_tokenizer
from tests.helpers.training import QA, conv, train_tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return train_tiny_model(tmp_path_factory)


@pytest.fixture(scope="session")
def tokenizer(tiny_model_dir):
    return load_tokenizer(str(tiny_model_dir))


@pytest.fixture(scope="session")
def examples(tokenizer):
    rows = [{"messages": conv(q, a)} for q, a in QA]
    ex, _ = encode_rows(tokenizer, rows, 512, "error", "train")
    return ex
