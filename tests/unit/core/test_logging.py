"""One logging configuration for every ``policytune.*`` logger: a module's own
``logging.getLogger("policytune.lm.engine")`` reaches stderr like a stage's, in the same
``HH:MM:SS <name>: message`` format, and ``POLICYTUNE_LOG_LEVEL`` reaches all of them."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]

SCRIPT = r"""
import logging
from policytune.core.progress import Progress, get_logger
from policytune.lm import engine, backends             # module loggers: logging.getLogger(...)
late = logging.getLogger("policytune.some.module")     # created before any configuration
log = get_logger("split")                              # what every stage does
log.info("stage info %d", 1)
engine.log.info("engine info")
backends.log.info("backends info")
late.info("late info")
log.warning("stage warning")
engine.log.warning("engine warning")
get_logger("split"); get_logger("train")                # more loggers: still one handler
Progress(get_logger("train"), "rows", 3).update(3)
"""

LINE = re.compile(r"^\d\d:\d\d:\d\d [a-z_.]+: .*$")


def run(code: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k != "POLICYTUNE_LOG_LEVEL"}
    full.update({"PYTHONPATH": str(REPO), **env})
    return subprocess.run([sys.executable, "-c", code], cwd=cwd or REPO, env=full, capture_output=True,
                          text=True, timeout=120)


def test_module_loggers_reach_stderr_in_the_stage_format():
    p = run(SCRIPT)
    assert p.returncode == 0, p.stderr
    lines = p.stderr.splitlines()
    assert all(LINE.match(x) for x in lines), lines
    bodies = [x[9:] for x in lines]  # after "HH:MM:SS "
    assert bodies[:6] == ["split: stage info 1", "lm.engine: engine info", "lm.backends: backends info",
                          "some.module: late info", "split: stage warning", "lm.engine: engine warning"]
    assert bodies[6] == "train: rows: 0/3" and bodies[7].startswith("train: rows: 3/3 (100%) ")
    assert len(lines) == 8 and p.stdout == ""  # one line per record, nothing on stdout


def test_log_level_env_silences_info_everywhere():
    p = run(SCRIPT, POLICYTUNE_LOG_LEVEL="WARNING")
    assert p.returncode == 0, p.stderr
    assert [x[9:] for x in p.stderr.splitlines()] == ["split: stage warning", "lm.engine: engine warning"]


def test_debug_level_reaches_module_loggers():
    p = run("from policytune.core.progress import get_logger; from policytune.lm import engine\n"
            "get_logger('x'); engine.log.debug('deep')", POLICYTUNE_LOG_LEVEL="debug")
    assert p.stderr.splitlines()[-1][9:] == "lm.engine: deep"


def test_a_bad_level_falls_back_to_info_and_says_so():
    p = run("from policytune.core.progress import get_logger; get_logger('x').info('still here')",
            POLICYTUNE_LOG_LEVEL="LOUD")
    lines = [x[9:] for x in p.stderr.splitlines()]
    assert lines[0].startswith("policytune: POLICYTUNE_LOG_LEVEL='LOUD' is not a logging level")
    assert lines[1] == "x: still here"


def test_a_real_stage_logs_through_it(tmp_path):
    stats = tmp_path / "data" / "stats"
    stats.mkdir(parents=True)
    for stage in ("scrape", "render", "extract", "generate_qa", "split", "augment"):
        (stats / f"{stage}.json").write_text('{"rows": 1}')
    code = "import sys; from stages.data_metrics import main; sys.exit(main())"
    p = run(code, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert re.fullmatch(r"\d\d:\d\d:\d\d data_metrics: wrote metrics/data\.json \(\d+ stages\)\n", p.stderr)
    p = run(code, cwd=tmp_path, POLICYTUNE_LOG_LEVEL="WARNING")
    assert p.returncode == 0 and p.stderr == ""


def test_records_still_propagate_to_the_root_logger(caplog):
    from policytune.core.progress import get_logger
    from policytune.lm import engine

    get_logger("split")
    with caplog.at_level(logging.INFO):
        engine.log.info("seen by caplog")
    assert "seen by caplog" in caplog.text


@pytest.mark.parametrize("name", ["policytune.split", "policytune.lm.engine"])
def test_no_policytune_logger_has_its_own_handler(name):
    from policytune.core.progress import configure_logging, get_logger

    get_logger("split")
    configure_logging()
    assert not logging.getLogger(name).handlers
    assert len(logging.getLogger("policytune").handlers) == 1
