"""The ``policytune`` console script: ``policytune chat``, ``policytune serve``, ``policytune params``.

    policytune chat [--base] [--rag] ...     # = python -m policytune.app.chat
    policytune serve [--port 8000] ...       # = python -m policytune.app.serve
    policytune params [SECTION ...]          # = python -m policytune.tools.params_cli
    policytune <command> --help

Each subcommand hands the rest of the command line to its module's ``main``.
"""

from __future__ import annotations

import importlib
import sys
from typing import Optional

COMMANDS = {
    "chat": ("policytune.app.chat", "chat with the fine-tuned model in the terminal (answers streamed)"),
    "serve": ("policytune.app.serve", "local web app + OpenAI-compatible API: base vs fine-tuned side by side"),
    "params": ("policytune.tools.params_cli", "print the effective params (params.yaml over the defaults), validated"),
}


def usage() -> str:
    lines = ["usage: policytune <command> [flags]", "", "commands:"]
    lines += [f"  {name:<7} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "policytune <command> --help lists a command's flags."]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return
    if argv[0] not in COMMANDS:
        print(f"policytune: unknown command {argv[0]!r}\n\n{usage()}", file=sys.stderr)
        raise SystemExit(2)
    module = importlib.import_module(COMMANDS[argv[0]][0])
    rc = module.main(argv[1:], prog=f"policytune {argv[0]}")
    if rc:
        raise SystemExit(rc)


if __name__ == "__main__":
    main()
