"""The memory allocator a stage process runs under: jemalloc where the system has it.

PyTorch on the CPU frees and reallocates many large, differently sized buffers (a micro-batch's
activations change shape with its rows). glibc's malloc keeps much of that freed memory in its
heaps, so a long training run's resident memory climbs step after step; jemalloc returns it.
Measured on the default train stage (2-core bf16 EPYC, Qwen2.5-0.5B, same rows; README,
"Memory allocator"): same tokens/s, lower peak RSS.

The allocator must be chosen before the process starts (``LD_PRELOAD``), so a stage run as a
program re-executes itself once under jemalloc: :func:`reexec_under_jemalloc`, called by
:func:`policytune.core.stage.stage_parser` before the stage reads anything. Nothing happens
when jemalloc is absent (the stage says so and runs under glibc), when it is already loaded,
or with ``POLICYTUNE_ALLOCATOR=system``. Children (torchrun workers) inherit ``LD_PRELOAD``.
"""

from __future__ import annotations

import ctypes.util
import os
import sys
from pathlib import Path
from typing import Optional

ENV = "POLICYTUNE_ALLOCATOR"          # "jemalloc" (default) | "system"
_MARK = "POLICYTUNE_ALLOCATOR_REEXEC"  # set in the re-executed process: never loop
NOTE: Optional[str] = None             # why the re-execution did not happen (logged at the stage's exit)
_CANDIDATES = ("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2", "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2",
               "/usr/lib64/libjemalloc.so.2", "/usr/lib/libjemalloc.so.2", "/usr/local/lib/libjemalloc.so.2")


def find_jemalloc() -> Optional[str]:
    """Path (or loader name) of the system's jemalloc shared library, or None."""
    for p in _CANDIDATES:
        if Path(p).is_file():
            return p
    return ctypes.util.find_library("jemalloc")


def jemalloc_loaded() -> bool:
    """Is jemalloc mapped into this process?"""
    try:
        return "jemalloc" in Path("/proc/self/maps").read_text(errors="replace")
    except OSError:
        return "jemalloc" in os.environ.get("LD_PRELOAD", "")


def current() -> str:
    """'jemalloc' or 'system': what this process allocates with (for the stage's exit line)."""
    return "jemalloc" if jemalloc_loaded() else "system"


def reexec_under_jemalloc(argv: Optional[list[str]] = None) -> Optional[str]:
    """Replace this process by the same command with jemalloc preloaded; returns (without
    re-executing) a one-line reason when it does not: opted out, already loaded, not installed,
    already re-executed once, or not on Linux."""
    choice = os.environ.get(ENV, "jemalloc").strip().lower()
    if choice not in ("jemalloc", "system"):
        return f"{ENV}={choice!r} is not one of 'jemalloc', 'system': using the system allocator"
    if choice == "system":
        return None
    if not sys.platform.startswith("linux"):
        return None
    if jemalloc_loaded():
        return None
    if os.environ.get(_MARK):
        return "jemalloc was preloaded but is not mapped: using the system allocator"
    lib = find_jemalloc()
    if lib is None:
        return ("jemalloc not installed (Debian: libjemalloc2): the system allocator keeps more freed "
                "memory, so peak RSS is higher")
    env = dict(os.environ)
    env["LD_PRELOAD"] = " ".join(x for x in (lib, env.get("LD_PRELOAD", "")) if x)
    env[_MARK] = "1"
    args = list(argv if argv is not None else getattr(sys, "orig_argv", [sys.executable, *sys.argv]))
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os.execve(sys.executable, [sys.executable, *args[1:]], env)
    return None  # not reached
