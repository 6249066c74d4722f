"""Logging for the whole package, and progress lines with rate and ETA for long loops.

Every ``policytune.*`` logger (a stage's ``get_logger("split")`` or a module's
``logging.getLogger("policytune.lm.engine")``) goes through ONE handler on the ``policytune``
parent logger: stderr, ``HH:MM:SS <name>: message``, level ``POLICYTUNE_LOG_LEVEL`` (default
INFO). It is set up by the first ``get_logger`` call or ``stage_parser`` (every stage), or
explicitly with ``configure_logging()``.

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


ROOT = "policytune"
LEVEL_ENV = "POLICYTUNE_LOG_LEVEL"


class _StageFormatter(logging.Formatter):
    """``HH:MM:SS <name>: message`` where <name> is the logger's name after ``policytune.``
    (``policytune.split`` -> ``split``, ``policytune.lm.engine`` -> ``lm.engine``)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(short_name)s: %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        name = record.name
        record.short_name = name[len(ROOT) + 1:] if name.startswith(ROOT + ".") else name
        return super().format(record)


def _our_handler(logger: logging.Logger) -> logging.Handler | None:
    return next((h for h in logger.handlers if getattr(h, "_policytune", False)), None)


def configure_logging(level: str | int | None = None) -> logging.Logger:
    """Configure the ``policytune`` parent logger: one stderr handler for every ``policytune.*``
    logger (stage loggers and module loggers alike; added once), level ``level`` or else
    ``POLICYTUNE_LOG_LEVEL`` (default INFO). Records also propagate to the root logger, so an
    application's (or pytest's caplog) own handlers see them too."""
    root = logging.getLogger(ROOT)
    if _our_handler(root) is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_StageFormatter())
        handler._policytune = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    lvl = level if level is not None else os.environ.get(LEVEL_ENV, "INFO")
    try:
        root.setLevel(lvl.upper() if isinstance(lvl, str) else lvl)
    except ValueError:
        root.setLevel(logging.INFO)
        root.warning("%s=%r is not a logging level (DEBUG, INFO, WARNING, ERROR); using INFO", LEVEL_ENV, lvl)
    return root


def ensure_logging() -> None:
    """:func:`configure_logging` unless it was done already (a level set since is kept)."""
    if _our_handler(logging.getLogger(ROOT)) is None:
        configure_logging()


def get_logger(stage: str) -> logging.Logger:
    """The logger ``policytune.<stage>`` (its lines: ``HH:MM:SS <stage>: message``); the first
    call configures the package's logging (:func:`ensure_logging`)."""
    ensure_logging()
    return logging.getLogger(f"{ROOT}.{stage}")


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
