"""Folder hashes: one walk over a folder's files with their sha256, and the three identities
built from it (each kept as it was, since caches and pinned catalog hashes depend on them):

- :func:`tree_sha256`: sha256 of a ``sha256sum``-style listing (the catalog's pinned encoder hash);
- :func:`dir_fingerprint`: what a teacher/judge cache key names a model folder by (file hashes
  memoised by path, size and mtime, so a 3 GB folder is hashed once per checkout);
- :func:`selected_files_sha`: sha256 over chosen files' names and hashes (train's base identity).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable, Optional

from policytune.core.records import read_json, sha256_file, stable_id, write_json


def file_sha256s(folder: str | Path, *, recursive: bool = True,
                 select: Optional[Callable[[Path], bool]] = None,
                 digest: Callable[[Path], str] = sha256_file) -> list[tuple[str, str, int]]:
    """Sorted ``(relative posix path, sha256, size)`` of every (selected) file under ``folder``."""
    folder = Path(folder)
    files = folder.rglob("*") if recursive else folder.glob("*")
    out = []
    for p in sorted(q for q in files if q.is_file() and (select is None or select(q))):
        out.append((p.relative_to(folder).as_posix(), digest(p), p.stat().st_size))
    return out


def tree_sha256(folder: str | Path) -> tuple[str, int]:
    """(sha256 of a ``sha256sum``-style listing of every file, total bytes) of a folder."""
    rows = file_sha256s(folder)
    listing = "".join(f"{sha}  {rel}\n" for rel, sha, _ in rows)
    return hashlib.sha256(listing.encode()).hexdigest(), sum(size for _, _, size in rows)


def _file_sha_memo() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "policytune" / "file_sha256.json"


def dir_fingerprint(path: str | Path) -> str:
    """sha256 over (relative path, file sha256) of every file in a folder, file hashes
    memoised by (real path, size, mtime) in ~/.cache/policytune. The caller checks that
    ``path`` is a folder."""
    memo_path = _file_sha_memo()
    try:
        memo = read_json(memo_path) if memo_path.exists() else {}
    except Exception:
        memo = {}
    changed = False

    def memo_sha(f: Path) -> str:
        nonlocal changed
        st = f.stat()
        mkey = f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        if mkey not in memo:
            memo[mkey] = sha256_file(f)
            changed = True
        return memo[mkey]

    parts = [(rel, sha) for rel, sha, _ in file_sha256s(path, digest=memo_sha)]
    if changed:
        try:
            write_json(memo_path, memo)
        except OSError:  # a read-only home is no reason to fail
            pass
    return stable_id(parts, n=64)


def selected_files_sha(folder: str | Path, suffixes: tuple[str, ...]) -> str:
    """sha256 over name + sha256 of the top-level files of ``folder`` with one of ``suffixes``."""
    h = hashlib.sha256()
    for rel, sha, _ in file_sha256s(folder, recursive=False, select=lambda p: p.suffix in suffixes):
        h.update(rel.encode() + sha.encode())
    return h.hexdigest()
