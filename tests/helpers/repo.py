"""Running the project's CLIs the way a user would, and throw-away copies of the repository
for real `dvc repro` runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


def run(cmd: list[str], cwd: Path, env: dict | None = None, timeout: float = 900, check: bool = True):
    """Run a CLI command the way a user would; on failure show its output."""
    full_env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", **(env or {})}
    p = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {p.returncode}\n--- stdout\n{p.stdout[-6000:]}\n--- stderr\n{p.stderr[-6000:]}")
    return p


# What DVC writes into the repository: the lock, the `cache: false` outputs (committed, see the
# README's "Working as a team") and the .gitignore files of its outputs.
DVC_WRITTEN = ("dvc.lock", "metrics/", "data/stats/", "data/eval/plots/")


def dvc_written(rel: str) -> bool:
    return rel.startswith(DVC_WRITTEN) or (rel.endswith(".gitignore") and rel.startswith(("data/", "models/")))


def copy_repo(dest: Path) -> Path:
    """Copy the project into a fresh git repo, the way a fresh clone sees it: the source files
    (tracked + untracked-not-ignored, as in the working tree), and of what DVC writes only the
    committed version (HEAD) - never the outputs of the developer's own runs."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file() and not dvc_written(rel) and not rel.startswith(("models/", "data/raw/", "data/pdf/")):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    committed = subprocess.run(["git", "ls-tree", "-r", "-z", "--name-only", "HEAD"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout.split("\0")
    for rel in filter(dvc_written, filter(None, committed)):
        blob = subprocess.run(["git", "show", f"HEAD:{rel}"], cwd=REPO, capture_output=True, check=True).stdout
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / rel).write_bytes(blob)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid"]
    run(["git", "init", "-q", "-b", "main"], dest)
    run([*git, "add", "-A"], dest)
    run([*git, "commit", "-qm", "copy"], dest)
    return dest


def set_params(repo: Path, updates: dict) -> None:
    """Deep-merge ``updates`` into repo/params.yaml."""
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text()) or {}

    def merge(dst, src):
        for k, v in src.items():
            if isinstance(v, dict) and isinstance(dst.get(k), dict):
                merge(dst[k], v)
            else:
                dst[k] = v

    merge(params, updates)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def stages_run(output: str) -> list[str]:
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")]
