"""The one shape of a DVC stage entry point (``stages/<name>.py``)::

    PATHS = {"input": "data/qa.jsonl", "stats": "data/stats/split.json"}   # the stage's paths, once

    def main(argv: list[str] | None = None) -> int:
        args = stage_parser(__doc__, "split", PATHS, SplitConfig).parse_args(argv)
        cfg = load_section(SplitConfig, "split", args.params)
        ...                                    # read inputs, call the library, write outputs
        return 0

    if __name__ == "__main__":
        sys.exit(main())

``--help`` prints the stage's docstring, one ``--<path>`` option per path (default: where
dvc.yaml expects it) and every key of its ``params.yaml`` section with default, help text and
the values it takes -- and exits before the stage reads or writes anything. The parser also
configures the package's logging (``policytune.core.progress``, ``POLICYTUNE_LOG_LEVEL``).
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import resource
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Optional

from policytune.core import allocator
from policytune.core.params import describe_type, field_hints, section_class
from policytune.core.progress import ensure_logging, get_logger


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def params_help(cls: type, section: str, indent: str = "  ") -> list[str]:
    """One line per key of ``section`` (nested dataclasses as dotted keys): default, help text and
    the values it takes (``(one of 'chunk', 'doc')``, ``(a number in [0, 1])``)."""
    lines = []
    hints = field_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{section}.{f.name}"
        sub = section_class(hints[f.name])
        if sub is not None:
            lines += params_help(sub, key, indent)
            continue
        text = f.metadata.get("help", "")
        lines.append(f"{indent}{key} = {_default(f)!r}" + (f"  {text}" if text else "")
                     + f"  ({describe_type(hints[f.name])})")
    return lines


_STARTED = time.monotonic()


def peak_rss_mib() -> tuple[float, float]:
    """(this process, its largest waited-for child) peak resident memory in MiB (Linux units)."""
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)


def _log_resources_at_exit(name: str) -> None:
    def report() -> None:
        own, child = peak_rss_mib()
        log = get_logger(name)
        if allocator.NOTE:
            log.warning("%s", allocator.NOTE)
        log.info("ran %.1f s, peak RSS %.0f MiB%s, allocator %s", time.monotonic() - _STARTED, own,
                 f" (largest child process {child:.0f} MiB)" if child else "", allocator.current())
    atexit.register(report)


def stage_parser(doc: Optional[str], name: str, paths: Mapping[str, str] | None = None,
                 config: type | None = None, section: Optional[str] = None) -> argparse.ArgumentParser:
    """argparse parser of stage ``name``: ``--params``, one option per entry of ``paths``.
    Run as the stage's program (``python -m stages.<name>``), the stage logs its wall time and
    peak memory when it exits."""
    ensure_logging()
    if Path(sys.argv[0]).stem == name and not {"-h", "--help"} & set(sys.argv[1:]):
        _log_resources_at_exit(name)
    doc = (doc or "").strip()
    first, _, rest = doc.partition("\n")
    epilog = rest.strip("\n")
    if config is not None:
        epilog += ("\n\n" if epilog else "") + f"params.yaml section '{section or name}':\n" + "\n".join(
            params_help(config, section or name))
    ap = argparse.ArgumentParser(prog=f"python -m stages.{name}", description=first, epilog=epilog or None,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default=None, help="params file (default: ./params.yaml)")
    for key, default in (paths or {}).items():
        ap.add_argument(f"--{key.replace('_', '-')}", dest=key, default=str(default),
                        help=f"default: {default}")
    return ap
