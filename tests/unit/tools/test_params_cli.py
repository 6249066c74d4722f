"""``policytune params [SECTION ...]``: the effective params (params.yaml over the defaults,
validated) as YAML."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from policytune.core.params import read_params
from policytune.tools.params_cli import SECTIONS, effective_params, main

REPO = Path(__file__).resolve().parents[3]


def test_all_sections_with_defaults_filled_in(capsys):
    assert main(["--params", str(REPO / "params.yaml")]) == 0
    eff = yaml.safe_load(capsys.readouterr().out)
    given = read_params(REPO / "params.yaml")
    assert list(eff) == list(SECTIONS)
    assert eff["split"]["near_dup_threshold"] == given["split"]["near_dup_threshold"]  # from params.yaml
    assert eff["train"]["lora"]["r"] == given["train"]["lora"]["r"]
    assert "warmup_steps" not in given["train"] and eff["train"]["warmup_steps"] == 0  # a default
    assert "top_p" not in given["evaluate"] and eff["evaluate"]["top_p"] == 0.9
    assert eff["evaluate"]["rag"] == {"enabled": True, "top_k": 3, "retriever": "hybrid", "max_chars": 1500}  # nested merged


def test_one_section_and_the_output_reads_back(tmp_path, capsys):
    p = tmp_path / "params.yaml"
    p.write_text("split:\n  group_by: doc\n  train: 1\n  val: 0\n  test: 0\n")
    assert main(["split", "--params", str(p)]) == 0
    out = capsys.readouterr().out
    eff = yaml.safe_load(out)
    assert list(eff) == ["split"] and eff["split"]["group_by"] == "doc" and eff["split"]["train"] == 1.0
    assert eff["split"]["seed"] == 42
    again = tmp_path / "again.yaml"
    again.write_text(out)
    assert effective_params(str(again), ["split"]) == eff  # the printed params are valid params


def test_bad_values_unknown_keys_and_sections_exit_2_naming_them(tmp_path, capsys):
    p = tmp_path / "params.yaml"
    for text, expect in [("split:\n  near_dup_threshold: zero point nine\n", "'split.near_dup_threshold'"),
                         ("train:\n  lora: {rank: 4}\n", "unknown key(s) in params 'train.lora': rank"),
                         ("trian:\n  epochs: 1\n", "unknown section(s) in params: trian; valid sections: models")]:
        p.write_text(text)
        assert main(["--params", str(p)]) == 2
        assert expect in capsys.readouterr().err
    p.write_text("split: {}\n")
    assert main(["splat", "--params", str(p)]) == 2
    assert "unknown section(s) splat" in capsys.readouterr().err


def test_console_script_dispatches_params(tmp_path):
    (tmp_path / "params.yaml").write_text("report:\n  n_examples: 2\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.run([sys.executable, "-m", "policytune.tools.cli", "params", "report"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert yaml.safe_load(p.stdout)["report"]["n_examples"] == 2
    (tmp_path / "params.yaml").write_text("report:\n  n_examples: two\n")
    p = subprocess.run([sys.executable, "-m", "policytune.tools.cli", "params"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "'report.n_examples' must be an integer >= 0, got 'two'" in p.stderr
    listing = subprocess.run([sys.executable, "-m", "policytune.tools.cli", "--help"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=120)
    assert "params" in listing.stdout
