"""core.isolate: forked calls under a wall-clock budget (kill, errors, dead workers, order)."""

from __future__ import annotations

import os
import signal
import time

from policytune.core.isolate import map_with_budget


def _work(x):
    if x == "sleep":
        time.sleep(60)
    if x == "raise":
        raise ValueError("bad page")
    if x == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    if x == "big":
        return b"x" * 20_000_000      # bigger than a pipe buffer: the parent must keep reading
    return x * 2


def test_results_in_order_with_timeouts_errors_and_deaths():
    items = [1, "sleep", 2, "raise", "die", 3, "big"]
    seen = []
    t0 = time.monotonic()
    out = map_with_budget(_work, items, seconds=1.5, workers=2, on_done=lambda i, o: seen.append(i))
    wall = time.monotonic() - t0
    assert [o.value for o in out[:1]] == [2] and out[2].value == 4 and out[5].value == 6
    assert out[1].timed_out and not out[1].ok and out[1].seconds >= 1.5
    assert out[3].error.startswith("ValueError: bad page")
    assert out[4].error.startswith("WorkerDied")
    assert len(out[6].value) == 20_000_000
    assert sorted(seen) == list(range(len(items)))
    assert wall < 10, wall            # the sleeping call was killed, not waited for


def test_budget_applies_per_call_not_per_batch():
    out = map_with_budget(time.sleep, [0.4, 0.4, 0.4, 0.4], seconds=1.0, workers=1)
    assert all(o.ok for o in out)
