"""dvc.yaml deps are the imports: every project source file a stage can import (its import
closure, lazy imports included) is covered by one of the stage's deps (the file itself or a
folder above it), so a fix in shared code reruns every stage it affects; and no code dep is
listed that the stage cannot import, so a change elsewhere reruns nothing.

Package ``__init__.py`` files that only hold a docstring (no import, no code) are left out of
the closure: editing their text changes no behaviour."""

from __future__ import annotations

import re

import pytest
import yaml

from policytune.core.imports import ROOT
from policytune.tools.dvc_deps import code_deps

CODE_ROOTS = ("policytune/", "stages/")

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
    closure = code_closure(module)
    covered = [d.rstrip("/") for d in deps]
    missing = [p for p in closure if not any(p == d or p.startswith(d + "/") for d in covered)]
    stale = [d for d in covered if d.startswith(CODE_ROOTS)
             and not any(p == d or p.startswith(d + "/") for p in closure)]
    expected = "\n".join(f"      - {p}" for p in closure)
    assert not missing and not stale, (
        f"dvc.yaml stage {name} runs {module}: deps miss {missing}, list code it cannot import "
        f"{stale}; its code deps are:\n{expected}")


def code_closure(module: str) -> list[str]:
    return code_deps(module)
