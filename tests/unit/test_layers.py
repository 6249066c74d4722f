"""The package is layered by pipeline phase: a module imports only its own layer or lower ones,
and nothing imports ``stages`` (stages are DVC entry points, like DVC's ``dvc/commands``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from policytune.core.imports import ROOT, direct_imports

LAYERS = ("core", "corpus", "lm", "dataset", "training", "evaluation", "report", "app", "tools")


def modules(top: str) -> list[str]:
    out = []
    for p in sorted((ROOT / top).rglob("*.py")):
        rel = p.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out.append(".".join(parts))
    return out


def layer(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "policytune" or len(parts) < 2:
        return None  # policytune/__init__ only names the version
    return LAYERS.index(parts[1])


def test_every_library_module_is_in_a_layer():
    for m in modules("policytune"):
        parts = m.split(".")
        assert len(parts) == 1 or parts[1] in LAYERS, f"{m}: not inside one of the layers {LAYERS}"


@pytest.mark.parametrize("module", modules("policytune"))
def test_imports_point_down(module):
    mine = layer(module)
    for dep in sorted(direct_imports(module)):
        assert not dep.startswith("stages"), f"{module} imports the stage {dep}"
        theirs = layer(dep)
        if mine is not None and theirs is not None:
            assert theirs <= mine, (f"{module} (layer {LAYERS[mine]}) imports {dep} "
                                    f"(layer {LAYERS[theirs]}, higher)")


@pytest.mark.parametrize("module", [m for m in modules("stages") if m != "stages"])
def test_stages_import_no_stage(module):
    bad = sorted(d for d in direct_imports(module) if d.startswith("stages.") and d != module)
    assert not bad, f"{module} imports {bad}: shared code belongs in policytune/"


def _test_and_bench_modules() -> list[Path]:
    return sorted([*(ROOT / "tests").rglob("*.py"), *(ROOT / "bench").rglob("*.py")])


def test_tests_and_benchmarks_use_stage_main_only():
    """Tests run a stage through its ``main`` (or ``python -m``); the mechanisms they test are
    imported from the library."""
    import ast

    for path in _test_and_bench_modules():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("stages"):
                names = {a.name for a in node.names}
                assert node.module.count(".") == 1 and names <= {"main"}, (
                    f"{path.relative_to(ROOT)}:{node.lineno} imports {sorted(names)} from {node.module}")
            if isinstance(node, ast.Import):
                for a in node.names:
                    assert not a.name.startswith("stages"), (
                        f"{path.relative_to(ROOT)}:{node.lineno} imports {a.name}; use "
                        f"`from {a.name} import main`")


def test_no_sys_path_hacks_in_tests():
    for path in (ROOT / "tests").rglob("*.py"):
        if path.name == "test_layers.py":
            continue
        text = path.read_text(encoding="utf-8")
        assert "sys.path.insert" not in text and "sys.path.append" not in text, path
