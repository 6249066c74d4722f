"""Folder hashes keep the values that caches and pinned catalog hashes were made with."""

from __future__ import annotations

import hashlib
import subprocess

from policytune.core import hashing
from policytune.core.records import sha256_file, stable_id


def make_tree(root):
    (root / "sub").mkdir(parents=True)
    (root / "a.json").write_text('{"x": 1}')
    (root / "b.safetensors").write_bytes(b"\0\1\2")
    (root / "notes.txt").write_text("skip me")
    (root / "sub" / "c.bin").write_bytes(b"abc")
    return root


def test_tree_sha256_is_the_sha_of_a_sha256sum_listing(tmp_path):
    root = make_tree(tmp_path / "m")
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    listing = subprocess.run(["sha256sum", *files], cwd=root, capture_output=True, text=True, check=True).stdout
    digest, total = hashing.tree_sha256(root)
    assert digest == hashlib.sha256(listing.encode()).hexdigest()
    assert total == sum((root / f).stat().st_size for f in files)


def test_dir_fingerprint_formula_and_memo(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = make_tree(tmp_path / "m")
    want = stable_id(sorted((p.relative_to(root).as_posix(), sha256_file(p))
                            for p in root.rglob("*") if p.is_file()), n=64)
    assert hashing.dir_fingerprint(root) == want
    assert (tmp_path / "cache" / "policytune" / "file_sha256.json").is_file()
    (root / "a.json").write_text('{"x": 2}')  # new size/mtime: hashed again, not served from the memo
    assert hashing.dir_fingerprint(root) != want


def test_selected_files_sha_top_level_suffixes_only(tmp_path):
    root = make_tree(tmp_path / "m")
    h = hashlib.sha256()
    for name in ("a.json", "b.safetensors"):
        h.update(name.encode() + sha256_file(root / name).encode())
    assert hashing.selected_files_sha(root, (".json", ".safetensors", ".bin")) == h.hexdigest()
