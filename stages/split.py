"""split: QA pairs -> leak-free train/val/test splits in chat format.

Reads   data/qa.jsonl (QA pairs from generate_qa) and, when ``split.external_test`` is set, that
        JSONL of {question, answer[, source...]} (e.g. a published FAQ).
Params  ``split`` (see :class:`policytune.dataset.split.SplitConfig`).
Writes  data/split/{train,val,test}.jsonl   the QA row plus ``split``; train/val rows also carry
                                            ``messages`` (system/user/assistant, policytune.lm.chat_format)
        data/split/near_dups.jsonl          every train/val row dropped as a near-duplicate of a
                                            test question, with the test row it matched
        data/stats/split.json               sizes, groups per split, near-dups removed, ...

Rows are split by group (the source chunk, or the whole document with ``group_by: doc``), so
no chunk/document feeds two splits. Groups are ordered by a seeded hash of their key and cut at
the target fractions of rows; a group's placement does not depend on input order. With few
groups, val and test still get one group each when there are enough groups for that. Then the
near-duplicate guard drops train/val rows whose question is too close to a test question
(normalised exact match always; embedding cosine >= ``near_dup_threshold`` with the encoder).
With ``external_test`` the external rows are the whole test split and generated pairs go to
train/val only.
"""

from __future__ import annotations

import sys
from pathlib import Path

from policytune.core.params import load_section
from policytune.core.progress import get_logger
from policytune.core.records import read_jsonl, sha256_file, write_json, write_jsonl
from policytune.core.stage import stage_parser
from policytune.dataset.split import (SPLITS, SplitConfig, SplitError, load_external_test, load_near_dup_embedder,
                                      split_records)

PATHS = {"input": "data/qa.jsonl", "out_dir": "data/split", "stats": "data/stats/split.json"}

log = get_logger("split")


def main(argv: list[str] | None = None) -> int:
    args = stage_parser(__doc__, "split", PATHS, SplitConfig).parse_args(argv)
    cfg = load_section(SplitConfig, "split", args.params)

    if not Path(args.input).is_file():
        raise SystemExit(f"split: {args.input} not found; run generate_qa first")
    try:
        rows = read_jsonl(args.input)
        external = load_external_test(cfg.external_test) if cfg.external_test else None
        embed = load_near_dup_embedder(cfg.encoder_dir) if cfg.near_dup_threshold is not None and rows else None
        log.info("splitting %d QA rows by %s%s", len(rows), cfg.group_by,
                 f" with external test {cfg.external_test} ({len(external)} rows)" if external else "")
        out, removed, stats = split_records(rows, cfg, external, embed)
    except SplitError as e:
        raise SystemExit(f"split: {e}") from None
    if external is not None:
        stats["external_test"]["sha256"] = sha256_file(cfg.external_test)

    out_dir = Path(args.out_dir)
    for s in SPLITS:
        write_jsonl(out_dir / f"{s}.jsonl", out[s])
    write_jsonl(out_dir / "near_dups.jsonl", removed)
    write_json(args.stats, stats)
    log.info("train %d / val %d / test %d rows (groups %s); near-duplicates removed: %d",
             *(stats["sizes"][s] for s in SPLITS), stats["groups"], stats["near_dup_removed"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
