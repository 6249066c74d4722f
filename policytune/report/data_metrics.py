"""Every data stage's counts (``data/stats/<stage>.json``) gathered into one DVC metrics
document; numbers only (bools as 0/1), nested as the stages wrote them."""

from __future__ import annotations

from pathlib import Path

from policytune.core.records import read_json

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
