"""replace_dir swaps a finished folder in whole; flatten names nested metrics the DVC way."""

from __future__ import annotations

import stat

from policytune.core.files import dir_bytes, replace_dir
from policytune.core.records import flatten


def test_replace_dir_replaces_whole_and_leaves_no_old_copy(tmp_path):
    out = tmp_path / "adapter"
    out.mkdir()
    (out / "stale.bin").write_bytes(b"old")
    build = tmp_path / "build"
    build.mkdir()
    (build / "new.bin").write_bytes(b"new!")
    build.chmod(0o700)
    replace_dir(build, out, readable=True)
    assert sorted(p.name for p in out.iterdir()) == ["new.bin"]
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert stat.S_IMODE((out / "new.bin").stat().st_mode) == 0o644
    assert not build.exists() and [p.name for p in tmp_path.iterdir()] == ["adapter"]
    assert dir_bytes(out) == 4


def test_flatten_all_values_and_scalars_only():
    d = {"a": {"b": 1, "c": {"d": "x"}}, "l": [1, 2], "n": None, "e": {}}
    assert flatten(d) == {"a.b": 1, "a.c.d": "x", "l": [1, 2], "n": None}
    assert flatten(d, scalars_only=True) == {"a.b": 1, "a.c.d": "x", "n": None}
