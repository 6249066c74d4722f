"""Keep dvc.yaml's code deps equal to each stage's import closure.

    python -m policytune.tools.dvc_deps          # show stages whose code deps differ (exit 1 if any)
    python -m policytune.tools.dvc_deps --write  # rewrite those deps in place (data deps, comments
                                                 # and everything else stay as they are)

A stage's code deps are the project source files its command (``python -m stages.<name>``) can
import, lazy imports included (:mod:`policytune.core.imports`), less package ``__init__.py``
files that hold only a docstring. ``tests/unit/test_dvc_deps.py`` fails when they drift.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

from policytune.core.imports import ROOT, closure_files

CODE_ROOTS = ("policytune/", "stages/")
_CMD = re.compile(r"python -m (stages\.\w+)")


def trivial_init(path: Path) -> bool:
    """A package ``__init__.py`` with no import and no code (docstring and constants only)."""
    if path.name != "__init__.py":
        return False
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return all(isinstance(n, (ast.Expr, ast.Assign)) and not isinstance(getattr(n, "value", None), ast.Call)
               for n in tree.body)


def code_deps(module: str, root: Path = ROOT) -> list[str]:
    """The code deps stage ``module`` needs: its own file, then the library files it imports."""
    deps = [rel.as_posix() for rel in closure_files(module, root) if not trivial_init(root / rel)]
    return sorted(deps, key=lambda p: (not p.startswith("stages/"), p))


def rewrite(text: str, root: Path = ROOT) -> tuple[str, list[str]]:
    """dvc.yaml text with every stage's code deps replaced by :func:`code_deps`; (text, changed stages)."""
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    changed: list[str] = []
    i, stage = 0, None
    while i < len(lines):
        line = lines[i]
        m = re.match(r"^  (\w+):\s*$", line)
        if m:
            stage = m.group(1)
        cmd = _CMD.search(line) if line.strip().startswith("cmd:") else None
        if cmd:
            module = cmd.group(1)
        if re.match(r"^\s+deps:\s*$", line) and stage:
            out.append(line)
            i += 1
            indent, old, rest = None, [], []
            while i < len(lines) and re.match(r"^\s+- ", lines[i]):
                item = lines[i]
                indent = indent or item[:len(item) - len(item.lstrip())]
                value = item.strip()[2:].strip()
                (old if value.startswith(CODE_ROOTS) else rest).append(item)
                i += 1
            want = code_deps(module, root)
            if [o.strip()[2:].strip() for o in old] != want:
                changed.append(stage)
            out += [f"{indent}- {p}\n" for p in want] + rest
            continue
        out.append(line)
        i += 1
    return "".join(out), changed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--write", action="store_true", help="rewrite dvc.yaml in place")
    ap.add_argument("--dvc-yaml", default=str(ROOT / "dvc.yaml"))
    args = ap.parse_args(argv)
    path = Path(args.dvc_yaml)
    new, changed = rewrite(path.read_text(encoding="utf-8"))
    if args.write and changed:
        path.write_text(new, encoding="utf-8")
    for st in changed:
        print(f"{'rewrote' if args.write else 'differs'}: {st}")
    return 0 if args.write or not changed else 1


if __name__ == "__main__":
    sys.exit(main())
