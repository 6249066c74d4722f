"""``policytune params [SECTION ...]``: the effective params -- params.yaml merged over every
section's defaults, validated -- printed as YAML.

    policytune params                 # every section
    policytune params split train     # just these
    policytune params --params other.yaml evaluate

A section of params.yaml that no stage reads, an unknown key or a value of the wrong type is
an error (exit 2) naming the key, exactly as the stage that reads it would fail.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any, Optional

import yaml

from policytune.core.params import ParamsError, from_dict, read_params, to_dict

# params.yaml section -> (module, config dataclass); in pipeline order.
SECTIONS: dict[str, tuple[str, str]] = {
    "models": ("policytune.lm.prepare", "ModelsConfig"),
    "prepare": ("policytune.lm.prepare", "PrepareConfig"),
    "scrape": ("policytune.corpus.config", "ScrapeConfig"),
    "render": ("policytune.corpus.html", "RenderConfig"),
    "extract": ("policytune.corpus.chunking", "ExtractConfig"),
    "generate_qa": ("policytune.dataset.qa", "GenerateQAConfig"),
    "split": ("policytune.dataset.split", "SplitConfig"),
    "augment": ("policytune.dataset.augment", "AugmentConfig"),
    "raft": ("policytune.dataset.raft", "RaftConfig"),
    "export_dataset": ("policytune.dataset.export", "ExportConfig"),
    "train": ("policytune.training.config", "TrainConfig"),
    "evaluate": ("policytune.evaluation.config", "EvaluateConfig"),
    "judge": ("policytune.evaluation.judge", "JudgeConfig"),
    "report": ("policytune.report.build", "ReportConfig"),
    "model_card": ("policytune.report.model_card", "ModelCardConfig"),
}

# stage (stages/<name>.py) -> the params.yaml sections it reads
STAGE_SECTIONS: dict[str, tuple[str, ...]] = {
    "scrape": ("scrape",), "render": ("render",), "extract": ("extract",), "generate_qa": ("generate_qa",),
    "split": ("split",), "augment": ("augment",), "raft": ("raft",), "data_metrics": (), "prepare_models": ("prepare", "models"),
    "train": ("train",), "evaluate": ("evaluate",), "judge": ("judge",), "report": ("report",),
    "export_dataset": ("export_dataset",), "model_card": ("model_card",),
}


def section_config(section: str) -> type:
    module, name = SECTIONS[section]
    return getattr(importlib.import_module(module), name)


def _plain(v: Any) -> Any:
    """YAML-safe: tuples as lists, nested containers converted."""
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def effective_params(path: Optional[str] = None, sections: Optional[list[str]] = None) -> dict:
    """``{section: params with defaults}`` for ``sections`` (default: all), validated."""
    data = read_params(path)
    unknown = sorted(set(data) - set(SECTIONS), key=str)
    if unknown:
        raise ParamsError(f"unknown section(s) in params: {', '.join(map(str, unknown))}; "
                          f"valid sections: {', '.join(SECTIONS)}")
    wanted = sections or list(SECTIONS)
    bad = [s for s in wanted if s not in SECTIONS]
    if bad:
        raise ParamsError(f"unknown section(s) {', '.join(bad)}; valid sections: {', '.join(SECTIONS)}")
    return {s: _plain(to_dict(from_dict(section_config(s), data.get(s), s))) for s in wanted}


def main(argv: Optional[list[str]] = None, prog: str = "policytune params") -> int:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0].replace("\n", " "),
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="sections: " + ", ".join(SECTIONS))
    ap.add_argument("sections", nargs="*", metavar="SECTION", help="params.yaml sections to print (default: all)")
    ap.add_argument("--params", default=None, help="params file (default: ./params.yaml or $POLICYTUNE_PARAMS)")
    args = ap.parse_args(argv)
    try:
        eff = effective_params(args.params, args.sections)
    except ParamsError as e:
        print(f"{prog.split()[0]}: {e}", file=sys.stderr)
        return 2
    sys.stdout.write(yaml.safe_dump(eff, sort_keys=False, allow_unicode=True, width=100))
    return 0


if __name__ == "__main__":
    sys.exit(main())
