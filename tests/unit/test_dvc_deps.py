"""dvc.yaml deps are the imports: every project source file a stage can import (its import
closure, lazy imports included) is covered by one of the stage's deps (the file itself or a
folder above it), so a fix in shared code reruns every stage it affects."""

from __future__ import annotations

import re

import pytest
import yaml

from policytune.core.imports import ROOT, closure_files

DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())
CMD = re.compile(r"python -m (stages\.\w+)")


def stage_entries():
    for name, st in DVC["stages"].items():
        body = st.get("do", st)
        m = CMD.search(body["cmd"])
        assert m, f"stage {name}: cmd {body['cmd']!r} is not `python -m stages.<name>`"
        yield name, m.group(1), [str(d) for d in body.get("deps", [])]


@pytest.mark.parametrize("name,module,deps", list(stage_entries()), ids=lambda v: v if isinstance(v, str) else "")
def test_deps_cover_the_import_closure(name, module, deps):
    covered = [d.rstrip("/") for d in deps]
    missing = []
    for rel in closure_files(module):
        p = rel.as_posix()
        if not any(p == d or p.startswith(d + "/") for d in covered):
            missing.append(p)
    assert not missing, f"dvc.yaml stage {name} runs {module} but its deps miss {missing}"


def test_stage_files_exist_for_every_stage():
    for name, module, _ in stage_entries():
        assert (ROOT / (module.replace(".", "/") + ".py")).is_file(), name
