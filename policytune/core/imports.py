"""The project's own import graph, read from source (``ast``, nothing is imported).

Used by the layer test (lower layers never import higher ones, nothing imports ``stages``),
the dvc.yaml deps test (a stage's deps cover every project module it can import), and by
cache keys that must change when the code behind them changes (render's PDF cache).
Every ``import`` counts, including those inside functions.
"""

from __future__ import annotations

import ast
import hashlib
from functools import lru_cache
from pathlib import Path

def _repo_root() -> Path:
    """The checkout this package runs from (policytune/core/imports.py -> ../../..), or the working
    directory when the package is installed elsewhere (stages run from the repository root)."""
    here = Path(__file__).resolve().parents[2]
    return here if (here / "stages").is_dir() else Path.cwd()


ROOT = _repo_root()
PACKAGES = ("policytune", "stages")


def module_file(name: str, root: Path = ROOT) -> Path | None:
    """The source file of project module ``name`` (a package's ``__init__.py``), or None."""
    base = root.joinpath(*name.split("."))
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.is_file():
            return cand
    return None


@lru_cache(maxsize=None)
def _imports_of_file(path: Path, name: str, is_pkg: bool) -> tuple[str, ...]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    pkg = name if is_pkg else name.rpartition(".")[0]
    out: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = pkg.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1])
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            out.append(mod)
            out += [f"{mod}.{a.name}" for a in node.names]  # `from pkg import module`
    return tuple(out)


def direct_imports(name: str, root: Path = ROOT) -> set[str]:
    """Project modules that module ``name`` imports (each resolved to an existing file)."""
    path = module_file(name, root)
    if path is None:
        return set()
    out = set()
    for mod in _imports_of_file(path, name, path.name == "__init__.py"):
        if mod.split(".")[0] in PACKAGES and module_file(mod, root) is not None:
            out.add(mod)
            # importing a.b.c runs a/__init__ and a/b/__init__ too
            parts = mod.split(".")
            out.update(".".join(parts[:i]) for i in range(1, len(parts)))
    out.discard(name)
    return {m for m in out if module_file(m, root) is not None}


def import_closure(name: str, root: Path = ROOT) -> set[str]:
    """``name`` and every project module it can import, transitively."""
    seen, todo = set(), [name]
    parts = name.split(".")
    todo += [".".join(parts[:i]) for i in range(1, len(parts))]
    while todo:
        mod = todo.pop()
        if mod in seen or module_file(mod, root) is None:
            continue
        seen.add(mod)
        todo.extend(direct_imports(mod, root) - seen)
    return seen


def closure_files(name: str, root: Path = ROOT) -> list[Path]:
    """Source files of :func:`import_closure`, sorted, relative to ``root``."""
    return sorted(module_file(m, root).relative_to(root) for m in import_closure(name, root))


def source_fingerprint(name: str, root: Path = ROOT) -> str:
    """sha256 over the path and bytes of every source file ``name`` can import."""
    h = hashlib.sha256()
    for rel in closure_files(name, root):
        h.update(rel.as_posix().encode() + b"\0" + (root / rel).read_bytes() + b"\0")
    return h.hexdigest()
