"""Shared test set-up: offline environment, a throw-away copy of the repo for real `dvc repro`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from teacher_server import TeacherServer  # noqa: E402

# Offline and quiet, whatever the caller's environment says.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["DVC_NO_ANALYTICS"] = "1"
os.environ["DEEPEVAL_TELEMETRY_OPT_OUT"] = "YES"
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def run(cmd: list[str], cwd: Path, env: dict | None = None, timeout: float = 900, check: bool = True):
    """Run a CLI command the way a user would; on failure show its output."""
    full_env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", **(env or {})}
    p = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {p.returncode}\n--- stdout\n{p.stdout[-6000:]}\n--- stderr\n{p.stderr[-6000:]}")
    return p


def copy_repo(dest: Path) -> Path:
    """Copy the project's source files (tracked + untracked-not-ignored) into a fresh git repo."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file() and not rel.startswith(("models/", "data/raw/", "data/pdf/")):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    # Stage outputs of the developer's own runs must not leak into the copy.
    for out in ("dvc.lock", "metrics"):
        p = dest / out
        if p.is_file():
            p.unlink()
        elif p.is_dir():
            shutil.rmtree(p)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid"]
    run(["git", "init", "-q"], dest)
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


@pytest.fixture
def pipeline_repo(tmp_path) -> Path:
    return copy_repo(tmp_path / "repo")


TINY = {
    "models": {"student": "tiny-llama", "teacher": "tiny-llama", "judge": "tiny-llama",
               "encoder": "all-minilm-l6-v2"},
    "prepare": {"dtype": "float32"},
    "scrape": {"delay_s": 0.0},
    "train": {"epochs": 2, "batch_tokens": 2048},
    "evaluate": {"max_new_tokens": 16, "limit": 12, "bootstrap": {"n_resamples": 200}},
    "judge": {"limit": 6, "max_new_tokens": 64},
}


def stages_run(output: str) -> list[str]:
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")]


@pytest.fixture(scope="session")
def teacher():
    with TeacherServer() as server:
        yield server


@pytest.fixture(scope="session")
def built(tmp_path_factory, teacher):
    """The whole pipeline run once with real `dvc repro` on the tiny models (shared, read-only)."""
    repo = copy_repo(tmp_path_factory.mktemp("e2e") / "repo")
    set_params(repo, TINY)
    set_params(repo, {"generate_qa": {"backend": "openai", "batch_size": 4,
                                      "openai": {"base_url": teacher.base_url, "model": "extractive",
                                                 "max_retries": 1, "backoff_s": 0.1}}})
    t0 = time.monotonic()
    p = run(["dvc", "repro"], repo, timeout=1800)
    (repo / "e2e_repro.log").write_text(p.stdout + p.stderr)
    print(f"cold dvc repro: {time.monotonic() - t0:.1f}s")
    return repo


