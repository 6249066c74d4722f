"""The prepare_models stage through its command line: params.yaml read, folder written, a
spec that cannot be resolved reported as exit code 1 without a folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from policytune.lm import catalog
from stages.prepare_models import main

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def tiny(prepared_tiny_student) -> tuple[Path, dict]:
    """models/<role>-style folder converted once a session from the tiny-llama catalog entry."""
    return prepared_tiny_student


def test_cli_reads_params_and_reports_errors(tiny, tmp_path, monkeypatch):
    src, _ = tiny
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(
        f"models:\n  student: {src}\n  teacher: org/not-a-cached-model\nprepare:\n  dtype: bfloat16\n")
    assert main(["--role", "student", "--out", str(tmp_path / "m" / "student")]) == 0
    assert catalog.model_info(tmp_path / "m" / "student")["spec"] == str(src)
    assert main(["--role", "teacher", "--out", str(tmp_path / "m" / "teacher")]) == 1
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["student"]


def test_help_lists_the_paths_and_params(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "--role {student,teacher,judge,encoder}" in out and "default: models/<role>" in out
    assert "prepare.dtype = 'bfloat16'" in out and "models.student = 'smollm2-135m-instruct'" in out


def test_default_out_is_models_slash_role(tiny, tmp_path, monkeypatch):
    src, _ = tiny
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(f"models:\n  judge: {src}\n")
    assert main(["--role", "judge"]) == 0
    assert catalog.model_info(tmp_path / "models" / "judge")["role"] == "judge"
