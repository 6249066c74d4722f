"""``python -m stages.<name> --help`` answers for every stage without running it: exit 0, every
key of the stage's params sections listed with its help text, nothing written."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from policytune.core.params import field_hints, section_class
from policytune.tools.params_cli import STAGE_SECTIONS, section_config

REPO = Path(__file__).resolve().parents[2]
STAGES = sorted(p.stem for p in (REPO / "stages").glob("*.py") if p.stem != "__init__")


def keys_and_help(cls: type, prefix: str):
    hints = field_hints(cls)
    for f in dataclasses.fields(cls):
        sub = section_class(hints[f.name])
        if sub is not None:
            yield from keys_and_help(sub, f"{prefix}.{f.name}")
        else:
            yield f"{prefix}.{f.name}", f.metadata.get("help", "")


def test_every_stage_is_registered_with_its_sections():
    assert set(STAGES) == set(STAGE_SECTIONS)


@pytest.mark.parametrize("stage", STAGES)
def test_help_lists_params_and_runs_nothing(stage, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    p = subprocess.run([sys.executable, "-m", f"stages.{stage}", "--help"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    out = p.stdout
    assert out.startswith(f"usage: python -m stages.{stage}") and "--params" in out
    for section in STAGE_SECTIONS.get(stage, ()):
        assert f"params.yaml section '{section}':" in out
        for key, text in keys_and_help(section_config(section), section):
            line = next((x for x in out.splitlines() if x.startswith(f"  {key} = ")), None)
            assert line is not None, f"{key} not listed"
            assert text in line, f"{key}: help text missing"
            assert line.endswith(")"), f"{key}: allowed values missing"
    assert sorted(x.name for x in tmp_path.iterdir()) == [], "--help wrote files"
