"""Folder outputs: put a finished build folder in place of an older one atomically enough that
a killed stage never leaves a half-written model folder behind."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def replace_dir(build: str | Path, out: str | Path, *, readable: bool = False) -> None:
    """Rename ``build`` to ``out``; an existing ``out`` is moved aside first and removed only
    once the new folder is in place. ``readable``: first give the tree normal permissions
    (mkdtemp/mkstemp create 0700/0600)."""
    build, out = Path(build), Path(out)
    if readable:
        build.chmod(0o755)
        for p in build.rglob("*"):
            p.chmod(0o755 if p.is_dir() else 0o644)
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
    build.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def dir_bytes(path: str | Path) -> int:
    """Total size of the files under ``path``."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
