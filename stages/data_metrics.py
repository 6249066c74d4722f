"""data_metrics: gather every data stage's counts into one DVC metrics file.

Reads  data/stats/<stage>.json  (written by scrape, render, extract, generate_qa, split, augment)
Writes metrics/data.json        {"<stage>": {...counts...}}, shown by `dvc metrics show`

Counts are kept as the stages wrote them (nested dicts, e.g. scrape.failed_by_reason.http_404),
so `dvc metrics diff` shows exactly which count a change moved. Non-numeric values (lists,
strings) are dropped here: DVC metrics are numbers; the stage stats files keep everything.
"""

from __future__ import annotations

import sys
from pathlib import Path

from policytune.core.progress import get_logger
from policytune.core.records import write_json
from policytune.core.stage import stage_parser
from policytune.report.data_metrics import gather

PATHS = {"stats_dir": "data/stats", "out": "metrics/data.json"}


def main(argv: list[str] | None = None) -> int:
    args = stage_parser(__doc__, "data_metrics", PATHS).parse_args(argv)
    log = get_logger("data_metrics")
    metrics = gather(Path(args.stats_dir))
    write_json(args.out, metrics)
    log.info("wrote %s (%d stages)", args.out, len(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
