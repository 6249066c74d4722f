"""Run pure functions on untrusted input in forked worker processes, each call under a wall-clock
budget that is enforced by killing the worker (a C extension stuck in a layout loop cannot be
interrupted from Python; a process can).

``map_with_budget(fn, items, seconds, workers)`` calls ``fn(item)`` for every item, at most
``workers`` at a time, and returns one :class:`Outcome` per item, in order. A call that runs
past ``seconds`` is killed and comes back with ``timed_out``; one that raises comes back with
``error``; a worker that dies (out of memory, a segfault in a C library) comes back with
``error`` too. Results travel back pickled through a pipe. Linux ``fork`` only: children
inherit the parent's loaded modules and fonts, so a call costs milliseconds, not an import.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any, Callable, Sequence


@dataclass
class Outcome:
    value: Any = None
    error: str | None = None      # "<ExceptionType>: message" when the call raised or the worker died
    timed_out: bool = False
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None and not self.timed_out


def _child(conn, fn: Callable, item: Any) -> None:
    try:
        result = ("ok", fn(item))
    except BaseException as e:  # noqa: BLE001 - everything goes back to the parent
        result = ("error", f"{type(e).__name__}: {e}"[:2000] + "\n" + traceback.format_exc(limit=3)[-1500:])
    try:
        conn.send(result)
    finally:
        conn.close()
        os._exit(0)   # no atexit handlers, no flushing of the parent's inherited buffers


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def map_with_budget(fn: Callable[[Any], Any], items: Sequence[Any], seconds: float,
                    workers: int = 1, on_done: Callable[[int, Outcome], None] | None = None) -> list[Outcome]:
    """``fn(item)`` for each item in a forked child, at most ``workers`` at once, each killed
    after ``seconds``; ``on_done(index, outcome)`` is called as each finishes."""
    ctx = mp.get_context("fork")
    out: list[Outcome | None] = [None] * len(items)
    pending = list(range(len(items)))[::-1]
    running: dict[Any, tuple[int, Any, float]] = {}   # conn -> (index, process, start)

    def finish(conn, outcome: Outcome) -> None:
        i, proc, start = running.pop(conn)
        outcome.seconds = time.monotonic() - start
        conn.close()
        proc.join(timeout=5)
        if proc.is_alive():   # pragma: no cover - the child exits right after sending
            proc.kill()
            proc.join()
        out[i] = outcome
        if on_done:
            on_done(i, outcome)

    try:
        while pending or running:
            while pending and len(running) < max(1, workers):
                i = pending.pop()
                recv, send = ctx.Pipe(duplex=False)
                proc = ctx.Process(target=_child, args=(send, fn, items[i]), daemon=True)
                proc.start()
                send.close()
                running[recv] = (i, proc, time.monotonic())
            now = time.monotonic()
            next_deadline = min(start + seconds for _, _, start in running.values())
            ready = wait(list(running), timeout=max(0.0, next_deadline - now))
            for conn in ready:
                try:
                    kind, value = conn.recv()
                except (EOFError, OSError):
                    proc = running[conn][1]
                    proc.join(timeout=5)
                    finish(conn, Outcome(error=f"WorkerDied: exit code {proc.exitcode}"))
                    continue
                finish(conn, Outcome(value=value) if kind == "ok" else Outcome(error=value))
            now = time.monotonic()
            for conn, (i, proc, start) in list(running.items()):
                if now - start >= seconds:
                    proc.kill()
                    proc.join()
                    finish(conn, Outcome(timed_out=True))
    finally:
        for conn, (_, proc, _) in list(running.items()):
            proc.kill()
            proc.join()
            conn.close()
    return out  # type: ignore[return-value]
