"""Resume state: one checkpoint file written atomically, and the fingerprint (params that change
the trajectory, data, base model, step composition) a checkpoint must match to be resumed from."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Optional

import torch

from policytune.core.hashing import selected_files_sha
from policytune.core.params import to_dict
from policytune.core.progress import get_logger
from policytune.core.records import sha256_file
from policytune.training.config import TrainConfig

log = get_logger("train")

CHECKPOINT_FILE = "last.pt"


def save_checkpoint(path: Path, payload: dict) -> None:
    """torch.save to a temp file in the same folder, fsync, rename: never a torn checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        torch.save(payload, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path, fingerprint: str) -> Optional[dict]:
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a file from an incompatible version: start over, say so
        log.warning("ignoring unreadable checkpoint %s (%s)", path, e)
        return None
    if payload.get("fingerprint") != fingerprint:
        log.info("checkpoint %s is from other data/params/base model; starting from scratch", path)
        return None
    return payload


def base_identity(base_dir: str) -> str:
    """sha256 naming the base model: its prepare_models manifest, else its config + weights."""
    d = Path(base_dir)
    manifest = d / "policytune_model.json"
    if manifest.is_file():
        return sha256_file(manifest)
    return selected_files_sha(d, (".json", ".safetensors", ".bin", ".jinja"))


def run_fingerprint(cfg: TrainConfig, data_sha: dict, base_sha: str, world: int) -> str:
    """What a checkpoint must match to be resumed from: params that change the trajectory,
    the data, the base model and the step composition (nproc x grad_accum)."""
    params = to_dict(cfg)
    for k in ("save_every_steps", "resume", "merge", "nproc", "num_threads", "compile", "paths", "base_dir"):
        params.pop(k)
    blob = json.dumps({"params": params, "data": data_sha, "base": base_sha,
                       "per_step": cfg.grad_accum * world}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()
