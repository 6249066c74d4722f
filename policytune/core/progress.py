"""Progress lines with rate and ETA for long loops, written to stderr via logging.

``dvc repro`` shows stage output as it runs, so a user sees e.g.
``generate_qa: chunks 12/40 (30%) 0.8/s ETA 35s``.
"""

from __future__ import annotations

import logging
import os
import sys
import time

# Hugging Face progress bars flood DVC logs; our own lines replace them.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def get_logger(stage: str) -> logging.Logger:
    logger = logging.getLogger(f"policytune.{stage}")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(f"%(asctime)s {stage}: %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(os.environ.get("POLICYTUNE_LOG_LEVEL", "INFO"))
        logger.propagate = False
    return logger


def _fmt_secs(s: float) -> str:
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


class Progress:
    """Counts done items of a known total and logs rate + ETA at most every ``every_s``."""

    def __init__(self, logger: logging.Logger, what: str, total: int, every_s: float = 5.0):
        self.logger, self.what, self.total, self.every_s = logger, what, max(0, total), every_s
        self.done = 0
        self.start = self.last = time.monotonic()
        self.logger.info("%s: 0/%d", what, self.total)

    def update(self, n: int = 1, note: str = "") -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.every_s or self.done >= self.total:
            self.last = now
            self.logger.info("%s", self.line(note))

    def line(self, note: str = "") -> str:
        elapsed = time.monotonic() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        pct = 100.0 * self.done / self.total if self.total else 100.0
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        eta_s = _fmt_secs(eta) if eta == eta else "?"
        extra = f" {note}" if note else ""
        return (f"{self.what}: {self.done}/{self.total} ({pct:.0f}%) {rate:.2f}/s "
                f"elapsed {_fmt_secs(elapsed)} ETA {eta_s}{extra}")
