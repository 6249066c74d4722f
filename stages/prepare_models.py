"""prepare_models: turn the model a role names in params.yaml into a plain local folder.

    python -m stages.prepare_models --role student|teacher|judge|encoder

Reads ``models.<role>`` (a spec: catalog name, local folder or .gguf, or Hugging Face id; see
policytune/lm/catalog.py) and section ``prepare``. Writes ``models/<role>/``:

- causal LMs: Hugging Face folder (safetensors in ``prepare.dtype``, tokenizer with a chat
  template and a pad token, generation config) converted once from the packaged GGUF, whose
  joined parts are checked against a pinned sha256;
- encoder: the sentence-transformers folder, copied after checking its pinned tree hash;
- ``policytune_model.json``: role, spec, source (package, version, files, sha256), kind, dtype,
  n_params, chat template sha, library versions.

The folder is built in a temp dir beside the target and renamed into place at the end, so a
killed run never leaves a half-written model. Nothing is downloaded unless the spec is a
Hugging Face id and HF_HUB_OFFLINE is unset.
"""

from __future__ import annotations

import sys
from pathlib import Path

from policytune.core.params import ParamsError, load_section
from policytune.core.progress import get_logger
from policytune.core.stage import params_help, stage_parser
from policytune.lm.catalog import ModelSourceError
from policytune.lm.prepare import ROLES, ModelsConfig, PrepareConfig, prepare

PATHS = {"out": "models/<role>"}  # <role>: the --role given
log = get_logger("prepare_models")


def main(argv: list[str] | None = None) -> int:
    ap = stage_parser(__doc__, "prepare_models", PATHS, PrepareConfig, section="prepare")
    ap.epilog += "\n\nparams.yaml section 'models':\n" + "\n".join(params_help(ModelsConfig, "models"))
    ap.add_argument("--role", required=True, choices=ROLES)
    args = ap.parse_args(argv)
    try:
        spec = getattr(load_section(ModelsConfig, "models", args.params), args.role)
        cfg = load_section(PrepareConfig, "prepare", args.params)
        prepare(args.role, spec, Path(args.out.replace("<role>", args.role)), cfg.dtype)
    except (ModelSourceError, ParamsError) as e:
        log.error("%s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
