"""The import graph counts lazy and relative imports; the stage CLI lists paths and params."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import pytest

from policytune.core.imports import closure_files, direct_imports, source_fingerprint
from policytune.core.stage import stage_parser


def write(root, rel, text):
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


@pytest.fixture
def tree(tmp_path):
    write(tmp_path, "policytune/__init__.py", '"""doc"""\n')
    write(tmp_path, "policytune/core/__init__.py", "")
    write(tmp_path, "policytune/core/a.py", "from . import b\n")
    write(tmp_path, "policytune/core/b.py", "def f():\n    import policytune.core.c\n")
    write(tmp_path, "policytune/core/c.py", "import json\n")
    write(tmp_path, "policytune/core/unused.py", "")
    write(tmp_path, "stages/__init__.py", "")
    write(tmp_path, "stages/s.py", "from policytune.core.a import x\n")
    return tmp_path


def test_closure_follows_relative_and_lazy_imports(tree):
    assert direct_imports("policytune.core.a", tree) >= {"policytune.core.b"}
    files = [p.as_posix() for p in closure_files("stages.s", tree)]
    assert files == ["policytune/__init__.py", "policytune/core/__init__.py", "policytune/core/a.py",
                     "policytune/core/b.py", "policytune/core/c.py", "stages/__init__.py", "stages/s.py"]


def test_source_fingerprint_changes_with_any_imported_module(tree):
    before = source_fingerprint("stages.s", tree)
    (tree / "policytune/core/unused.py").write_text("x = 1\n")
    assert source_fingerprint("stages.s", tree) == before
    (tree / "policytune/core/c.py").write_text("import os\n")
    assert source_fingerprint("stages.s", tree) != before


@dataclass
class Inner:
    k: int = field(default=3, metadata={"help": "inner knob"})


@dataclass
class Cfg:
    rate: float = field(default=0.5, metadata={"help": "how often"})
    inner: Inner = field(default_factory=Inner)


def test_stage_parser_paths_and_params_help(capsys):
    ap = stage_parser("demo: one line\n\nMore text.", "demo", {"out_dir": "data/x"}, Cfg)
    args = ap.parse_args([])
    assert args.out_dir == "data/x" and args.params is None
    assert ap.parse_args(["--out-dir", "y", "--params", "p.yaml"]).out_dir == "y"
    with pytest.raises(SystemExit):
        ap.parse_args(["--help"])
    text = capsys.readouterr().out
    assert "python -m stages.demo" in text and "More text." in text
    assert "demo.rate = 0.5  how often" in text and "demo.inner.k = 3  inner knob" in text


def test_a_stage_run_as_a_program_logs_its_time_and_peak_memory(tmp_path):
    """`python -m stages.<name>` logs wall time and peak RSS at exit (here: a split that stops at
    its missing input); --help prints only the help."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]
    env = {**os.environ, "PYTHONPATH": str(root)}
    p = subprocess.run([sys.executable, "-m", "stages.split"], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode != 0
    assert re.search(r"split: ran \d+\.\d s, peak RSS \d+ MiB", p.stderr + p.stdout), p.stderr
    h = subprocess.run([sys.executable, "-m", "stages.split", "--help"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    assert h.returncode == 0 and "peak RSS" not in h.stderr + h.stdout


def test_a_stage_run_as_a_program_runs_under_jemalloc(tmp_path):
    """`python -m stages.<name>` re-executes itself once under jemalloc where it is installed
    (setup.sh installs Debian's libjemalloc2), says so at exit, and says why not otherwise;
    POLICYTUNE_ALLOCATOR=system keeps glibc's malloc."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from policytune.core import allocator

    root = Path(__file__).resolve().parents[3]
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"} | {"PYTHONPATH": str(root)}

    def run(**extra) -> str:
        p = subprocess.run([sys.executable, "-m", "stages.split"], cwd=tmp_path, env=env | extra,
                           capture_output=True, text=True, timeout=120)
        return p.stderr + p.stdout

    out = run()
    if allocator.find_jemalloc():
        assert "allocator jemalloc" in out, out
    else:
        assert "allocator system" in out and "jemalloc not installed" in out, out
    out = run(POLICYTUNE_ALLOCATOR="system")
    assert "allocator system" in out and "jemalloc" not in out.replace("allocator system", ""), out
    out = run(POLICYTUNE_ALLOCATOR="tcmalloc")
    assert "allocator system" in out and "is not one of 'jemalloc', 'system'" in out, out


def test_allocator_reexec_reasons(monkeypatch):
    """No re-execution (and a reason where the user loses something) when opted out, already
    loaded, not installed or already re-executed once; the command line is kept."""
    from policytune.core import allocator

    calls = []
    monkeypatch.setattr(allocator.os, "execve", lambda *a: calls.append(a))
    monkeypatch.setattr(allocator, "jemalloc_loaded", lambda: False)
    monkeypatch.setenv("POLICYTUNE_ALLOCATOR", "system")
    assert allocator.reexec_under_jemalloc(["python", "-m", "stages.x"]) is None and not calls
    monkeypatch.delenv("POLICYTUNE_ALLOCATOR")
    monkeypatch.setattr(allocator, "find_jemalloc", lambda: None)
    assert "not installed" in allocator.reexec_under_jemalloc(["python", "-m", "stages.x"]) and not calls
    monkeypatch.setattr(allocator, "find_jemalloc", lambda: "/lib/libjemalloc.so.2")
    monkeypatch.setenv("LD_PRELOAD", "/lib/other.so")
    allocator.reexec_under_jemalloc(["python", "-m", "stages.x", "--flag"])
    (exe, argv, env), = calls
    assert argv[1:] == ["-m", "stages.x", "--flag"]
    assert env["LD_PRELOAD"] == "/lib/libjemalloc.so.2 /lib/other.so" and env[allocator._MARK] == "1"
    monkeypatch.setenv(allocator._MARK, "1")
    assert "not mapped" in allocator.reexec_under_jemalloc(["python", "-m", "stages.x"]) and len(calls) == 1
    monkeypatch.setattr(allocator, "jemalloc_loaded", lambda: True)
    assert allocator.reexec_under_jemalloc(["python", "-m", "stages.x"]) is None and len(calls) == 1
