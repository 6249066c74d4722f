"""export_dataset: the QA data as a Hugging Face dataset folder that `datasets.load_dataset` reads.

Reads   data/qa.jsonl (generate_qa), data/split/{train,val,test}.jsonl (split),
        data/augment/train.jsonl (augment)
Params  ``export_dataset`` (see :class:`policytune.dataset.export.ExportConfig`; optional section)
Writes  data/policytune-qa/README.md                 dataset card: YAML front matter (configs,
                                                     splits, features, sizes) and text (sources,
                                                     counts per split, teachers, lineage fields)
        data/policytune-qa/data/<config>/<split>.jsonl
            default/{train,validation,test}  the split stage's splits
            augmented/train                  the rows the adapter was trained on
            qa/train                         every accepted teacher pair, before the split

The folder is written with the `datasets` library into a temp dir beside the out, read back with
`datasets.load_dataset` (every config: splits, row counts, columns, qa_ids must match), and only
then renamed into place. Load it with ``load_dataset("./data/policytune-qa")`` (a local folder, no hub) (or ``, "augmented"``).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from policytune.core.files import replace_dir
from policytune.core.params import ParamsError, load_section
from policytune.core.progress import get_logger
from policytune.core.records import read_jsonl, sha256_file
from policytune.core.stage import stage_parser
from policytune.dataset.export import SOURCES, ExportConfig, ExportError, export

PATHS = {"qa": "data/qa.jsonl", "train": "data/split/train.jsonl", "val": "data/split/val.jsonl",
         "test": "data/split/test.jsonl", "augmented": "data/augment/train.jsonl", "out": "data/policytune-qa"}

log = get_logger("export_dataset")


def main(argv: list[str] | None = None) -> int:
    args = stage_parser(__doc__, "export_dataset", PATHS, ExportConfig).parse_args(argv)
    try:
        cfg = load_section(ExportConfig, "export_dataset", args.params)
    except ParamsError as e:
        raise SystemExit(f"export_dataset: {e}") from None
    rows, inputs = {}, {}
    for key in SOURCES:
        path = Path(getattr(args, key))
        if not path.is_file():
            raise SystemExit(f"export_dataset: {path} not found; run `dvc repro` up to the augment stage first")
        rows[key] = read_jsonl(path)
        inputs[key] = {"path": str(path), "sha256": sha256_file(path), "rows": len(rows[key])}

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    build = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(build, ignore_errors=True)
    try:
        counts = export(rows, inputs, build, cfg, folder=str(out))
    except ExportError as e:
        shutil.rmtree(build, ignore_errors=True)
        raise SystemExit(f"export_dataset: {e}") from None
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    replace_dir(build, out)
    log.info("wrote %s: %s (read back with datasets.load_dataset)", out,
             "; ".join(f"{c} " + ", ".join(f"{s} {n}" for s, n in sp.items()) for c, sp in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
