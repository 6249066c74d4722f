"""policytune.lm.loading: dtype choice (the conversions and reloads are in test_prepare.py)."""

from __future__ import annotations

import pytest

from policytune.lm import loading


def test_bf16_supported_and_resolve_dtype():
    import torch

    assert isinstance(loading.bf16_supported("cpu"), bool)
    assert loading.resolve_dtype("float16") is torch.float16
    assert loading.resolve_dtype("auto", "bfloat16", "cpu") is (
        torch.bfloat16 if loading.bf16_supported("cpu") else torch.float32)
    for bad in ("int8", "bf16x"):
        with pytest.raises(ValueError, match="unknown dtype"):
            loading.resolve_dtype(bad)
