"""augment: the study's four text augmentations, applied to the TRAIN split only.

Reads   data/split/train.jsonl (split rows with ``messages``)
Params  ``augment`` (see :class:`AugmentConfig`)
Writes  data/augment/train.jsonl    every original train row (``augmentation: null``), each
                                    followed by its augmented copies (new ``qa_id``,
                                    ``augmentation`` {op, seed, parent_qa_id, engine, copy,
                                    fields}, ``messages`` rebuilt)
        data/augment/skipped.jsonl  every planned copy that was not emitted, with its reason
        data/stats/augment.json     rows in/out, augmented by op, skipped by reason, engines

Ops (one drawn per copy with the ``weights`` of params, from a seed derived from the global
seed, the row's qa_id and the copy number, so adding or removing a row changes no other row):

- ``synonym``: WordNet synonym replacement (nltk over Debian's WordNet files, offline).
- ``back_translation``: English -> pivot -> English with Apertium (offline, default),
  Google Translate via deep-translator (needs network), or the local teacher LLM.
- ``char_delete`` / ``char_swap``: random deletion of letters / swap of neighbouring letters
  inside words (first and last letter, digits, punctuation and spaces are never touched).

The question (the model's input) is augmented; the answer only with ``augment_answer: true``.
A copy identical to its parent (or to an earlier copy) is skipped and counted, never emitted.
An engine that a positive weight asks for but that is not installed is an error that says how
to install it.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from policytune.core.params import load_section
from policytune.core.progress import get_logger
from policytune.core.records import read_jsonl, write_json, write_jsonl
from policytune.core.stage import stage_parser
from policytune.dataset.augment import AugmentConfig, EngineUnavailable, augment_records, make_engines

PATHS = {
    "input": "data/split/train.jsonl",
    "output": "data/augment/train.jsonl",
    "skipped": "data/augment/skipped.jsonl",
    "stats": "data/stats/augment.json",
}

log = get_logger("augment")


def main(argv: list[str] | None = None) -> int:
    args = stage_parser(__doc__, "augment", PATHS, AugmentConfig).parse_args(argv)
    cfg = load_section(AugmentConfig, "augment", args.params)

    if not Path(args.input).is_file():
        raise SystemExit(f"augment: {args.input} not found; run the split stage first")
    rows = read_jsonl(args.input)
    try:
        engines = make_engines(cfg)
    except EngineUnavailable as e:
        raise SystemExit(f"augment: {e}") from None
    log.info("augmenting %d train rows x %d copies (weights %s, engines %s)",
             len(rows), cfg.copies, cfg.weights, engines.versions())
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    out, skipped, stats = augment_records(rows, cfg, engines, timings)
    for op, secs in sorted(timings.items()):
        n = stats["planned_by_op"].get(op, 0)
        log.info("%s: %d rows in %.2fs (%.1f rows/s)", op, n, secs, n / secs if secs > 0 else float("inf"))
    write_jsonl(args.output, out)
    write_jsonl(args.skipped, skipped)
    write_json(args.stats, stats)
    log.info("wrote %d rows (%d augmented, %d skipped: %s) in %.1fs", stats["rows_out"], stats["augmented"],
             stats["skipped"], stats["skipped_by_reason"], time.perf_counter() - t0)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
