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
from policytune.core.records import read_json, write_json

STAGES = ["scrape", "render", "extract", "generate_qa", "split", "augment"]


def numeric_only(obj):
    """Keep numbers (and bools as 0/1) from nested dicts; drop everything else."""
    if isinstance(obj, bool):
        return int(obj)
    if isinstance(obj, (int, float)):
        return obj
    if isinstance(obj, dict):
        out = {str(k): numeric_only(v) for k, v in obj.items()}
        return {k: v for k, v in out.items() if v is not None and v != {}}
    return None


def gather(stats_dir: Path, stages: list[str] = STAGES) -> dict:
    missing = [s for s in stages if not (stats_dir / f"{s}.json").exists()]
    if missing:
        raise FileNotFoundError(f"missing stage stats: {', '.join(missing)} in {stats_dir}; run `dvc repro` first")
    return {s: numeric_only(read_json(stats_dir / f"{s}.json")) for s in stages}


def main() -> int:
    log = get_logger("data_metrics")
    metrics = gather(Path("data/stats"))
    write_json("metrics/data.json", metrics)
    log.info("wrote metrics/data.json (%d stages)", len(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
