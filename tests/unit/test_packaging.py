"""Packaging: pyproject declares every package that policytune/ and stages/ import (pinned as in
requirements.lock), the wheel holds the policytune package only (no top-level ``stages``) with
the Apache-2.0 LICENSE, and the LICENSE file is the Apache License 2.0."""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile

from policytune.core.imports import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
_REQ = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^;\s]+)")


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(reqs) -> dict[str, str]:
    out = {}
    for r in reqs:
        m = _REQ.match(r.strip())
        assert m, f"pyproject requirement {r!r} is not pinned with =="
        out[norm(m.group(1))] = m.group(2)
    return out


def lock_pins() -> dict[str, str]:
    return pins(line for line in (ROOT / "requirements.lock").read_text().splitlines()
                if line.strip() and not line.startswith(("#", "-", "--")))


def third_party_imports(*tops: str) -> dict[str, set[str]]:
    """Top-level module -> files importing it (absolute imports, lazy ones included)."""
    std = set(sys.stdlib_module_names) | {"__future__", "policytune", "stages", "tests", "bench"}  # bench: the repo's benchmarks
    found: dict[str, set[str]] = {}
    for top in tops:
        for p in sorted((ROOT / top).rglob("*.py")):
            for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    mod = name.split(".")[0]
                    if mod not in std:
                        found.setdefault(mod, set()).add(str(p.relative_to(ROOT)))
    return found


def test_every_imported_package_is_declared_and_pinned_as_locked():
    declared = pins(PYPROJECT["project"]["dependencies"])
    dists = md.packages_distributions()
    missing = {}
    for mod, files in third_party_imports("policytune", "stages").items():
        names = {norm(d) for d in dists.get(mod, [])}
        assert names, f"{mod} (imported by {sorted(files)[:3]}) is not installed"
        if not names & set(declared):
            missing[mod] = sorted(names)
    assert not missing, f"imported but not in pyproject dependencies: {missing}"
    lock = lock_pins()
    test_extra = pins(PYPROJECT["project"]["optional-dependencies"]["test"])
    wrong = {n: (v, lock.get(n)) for n, v in {**declared, **test_extra}.items() if lock.get(n) != v}
    assert not wrong, f"pyproject pins differ from requirements.lock (pyproject, lock): {wrong}"


def test_test_extra_covers_what_the_tests_import():
    runtime = set(pins(PYPROJECT["project"]["dependencies"]))
    extra = set(pins(PYPROJECT["project"]["optional-dependencies"]["test"]))
    dists = md.packages_distributions()
    lacking = {mod: sorted(dists.get(mod, [mod])) for mod in third_party_imports("tests")
               if not {norm(d) for d in dists.get(mod, [])} & (runtime | extra)
               and not mod.startswith(("gt_", "llm_", "tinycoder"))}  # model-weight packages (requirements-models*.txt)
    assert not lacking, f"tests import packages neither runtime nor test extra declares: {lacking}"


def test_wheel_holds_only_the_policytune_package(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "policytune", src / "policytune", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "stages", src / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(tmp_path / "dist")], cwd=src, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("policytune-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    tops = {n.split("/")[0] for n in names}
    dist_info = {t for t in tops if t.endswith(".dist-info")}
    assert tops - dist_info == {"policytune"}, sorted(tops)
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "License-Expression: Apache-2.0" in meta
    assert "Requires-Dist: matplotlib==" in meta and "Requires-Dist: datasets==" in meta


def test_license_is_the_apache_license_2_0():
    text = (ROOT / "LICENSE").read_text()
    assert text.lstrip().startswith("Apache License\n                           Version 2.0, January 2004")
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert "END OF TERMS AND CONDITIONS" in text and len(text.splitlines()) == 202
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
