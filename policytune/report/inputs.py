"""The report's inputs: evaluate/judge/train outputs and the data lineage (hashes, counts,
model manifests, params)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import yaml

from policytune.core.progress import get_logger
from policytune.core.records import read_json, read_jsonl, sha256_file

log = get_logger("report")

EVAL_JSON = Path("metrics/eval.json")
PER_EXAMPLE = Path("data/eval/per_example.jsonl")
ANSWERS = Path("data/eval/answers.jsonl")
JUDGE_JSON = Path("metrics/judge.json")
JUDGE_SCORES = Path("data/judge/scores.jsonl")
EVAL_STATS = Path("data/stats/evaluate.json")
TRAIN_JSON = Path("metrics/train.json")
DATA_JSON = Path("metrics/data.json")
RENDER_STATS = Path("data/stats/render.json")
JUDGE_STATS = Path("data/stats/judge.json")


@dataclass
class Inputs:
    flat: dict
    per_example: list
    answers: list
    judge_flat: Optional[dict] = None
    judge_scores: Optional[list] = None
    eval_stats: Optional[dict] = None
    judge_stats: Optional[dict] = None
    lineage: Optional[dict] = None
    train_metrics: Optional[dict] = None
    data_metrics: Optional[dict] = None
    render_stats: Optional[dict] = None   # data/stats/render.json: retention and the low_retention pages


def count_lines(path: Path) -> Optional[int]:
    if not path.is_file():
        return None
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def collect_lineage(root: Path = Path(".")) -> dict:
    facts = []
    raw = root / "data/raw/manifest.jsonl"
    chunks = root / "data/chunks.jsonl"
    if raw.is_file():
        facts.append(["Corpus hash (sha256 of data/raw/manifest.jsonl)", sha256_file(raw)])
        facts.append(["Pages in the raw manifest", str(count_lines(raw))])
    if chunks.is_file():
        facts.append(["Chunks hash (sha256 of data/chunks.jsonl)", sha256_file(chunks)])
        facts.append(["Chunks", str(count_lines(chunks))])
    if not raw.is_file() and not chunks.is_file():
        facts.append(["Corpus hash", "unknown (data/raw/manifest.jsonl and data/chunks.jsonl absent)"])
    qa = root / "data/qa.jsonl"
    if qa.is_file():
        facts.append(["QA pairs generated (data/qa.jsonl)", str(count_lines(qa))])
    for split in ("train", "val", "test"):
        p = root / f"data/split/{split}.jsonl"
        if p.is_file():
            facts.append([f"Split {split}", f"{count_lines(p)} rows, sha256 {sha256_file(p)[:16]}"])
    aug = root / "data/augment/train.jsonl"
    if aug.is_file():
        facts.append(["Augmented train rows (data/augment/train.jsonl)", str(count_lines(aug))])
    train_info = root / "models/adapter/policytune_train.json"
    if train_info.is_file():
        try:
            info = read_json(train_info)
            keep = {k: v for k, v in info.items() if not isinstance(v, (dict, list))}
            facts.append(["Adapter (models/adapter/policytune_train.json)",
                          ", ".join(f"{k}={v}" for k, v in sorted(keep.items()))])
        except (OSError, ValueError) as e:
            facts.append(["Adapter train record", f"unreadable: {e}"])
    models = []
    for mf in sorted((root / "models").glob("*/policytune_model.json")):
        try:
            d = read_json(mf)
        except (OSError, ValueError):
            continue
        src = d.get("source") or {}
        models.append([mf.parent.name, str(d.get("role", "")), str(d.get("spec", "")),
                       str(src.get("upstream") or src.get("name") or src.get("path") or ""),
                       str(src.get("sha256", ""))[:16], str(d.get("dtype", "")),
                       f"{d['n_params'] / 1e6:.1f}M" if isinstance(d.get("n_params"), (int, float)) else "",
                       str(d.get("chat_template_sha", ""))])
    params_text = None
    pf = root / "params.yaml"
    if pf.is_file():
        try:
            params_text = yaml.safe_dump(yaml.safe_load(pf.read_text()) or {}, sort_keys=False,
                                         allow_unicode=True).strip()
        except yaml.YAMLError as e:
            params_text = f"(params.yaml unreadable: {e})"
    return {"facts": facts, "models": models, "params": params_text}


def load_inputs(eval_json: Path = EVAL_JSON, per_example: Path = PER_EXAMPLE, answers: Path = ANSWERS,
                judge_json: Path = JUDGE_JSON, judge_scores: Path = JUDGE_SCORES, eval_stats: Path = EVAL_STATS,
                judge_stats: Path = JUDGE_STATS, root: Path = Path("."), train_json: Path = TRAIN_JSON,
                data_json: Path = DATA_JSON, render_stats: Path = RENDER_STATS) -> Inputs:
    for p in (eval_json, per_example, answers):
        if not Path(p).is_file():
            raise SystemExit(f"report: {p} not found; run the evaluate stage first")
    judge_ok = Path(judge_json).is_file() and Path(judge_scores).is_file()
    if Path(judge_json).is_file() != Path(judge_scores).is_file():
        log.warning("only one of %s and %s exists; reporting the judge as not run", judge_json, judge_scores)
    return Inputs(
        flat=read_json(eval_json), per_example=read_jsonl(per_example), answers=read_jsonl(answers),
        judge_flat=read_json(judge_json) if judge_ok else None,
        judge_scores=read_jsonl(judge_scores) if judge_ok else None,
        eval_stats=read_json(eval_stats) if Path(eval_stats).is_file() else None,
        judge_stats=read_json(judge_stats) if judge_ok and Path(judge_stats).is_file() else None,
        lineage=collect_lineage(root),
        train_metrics=read_json(train_json) if Path(train_json).is_file() else None,
        data_metrics=read_json(data_json) if Path(data_json).is_file() else None,
        render_stats=read_json(render_stats) if Path(render_stats).is_file() else None)
