"""model_card: the adapter's complete model card, with the evaluation results.

Reads   models/adapter/policytune_train.json  (train: what was trained on what, the base manifest)
        metrics/eval.json                     (evaluate: delta.<metric>.{mean,ci_low,ci_high})
        data/stats/evaluate.json              (evaluate: the CI level; optional, default 95%)
        data/policytune-qa/                   (export_dataset: the dataset the card names)
Params  ``model_card`` (see :class:`policytune.report.model_card.ModelCardConfig`; optional section)
Writes  models/card/README.md  the adapter's card: Hugging Face front matter (license,
                               pipeline_tag, library_name, base_model, datasets, tags and a
                               model-index holding every fine-tuned minus base difference with
                               its CI) and the train stage's card text plus an evaluation table

``train`` runs before ``evaluate``, so the card it writes into models/adapter/ cannot hold the
evaluation, and no stage may rewrite another stage's outs: this stage writes the complete card to
its own out. To publish the adapter, upload models/adapter/ with this README.md in place of its own.
"""

from __future__ import annotations

import sys
from pathlib import Path

from policytune.core.params import ParamsError, load_section
from policytune.core.progress import get_logger
from policytune.core.records import atomic_write_text, read_json
from policytune.core.stage import stage_parser
from policytune.lm.adapters import TRAIN_INFO
from policytune.report.model_card import ModelCardConfig, complete_card, eval_deltas

PATHS = {"adapter": "models/adapter", "eval_json": "metrics/eval.json", "eval_stats": "data/stats/evaluate.json",
         "dataset": "data/policytune-qa", "out": "models/card/README.md"}

log = get_logger("model_card")


def main(argv: list[str] | None = None) -> int:
    args = stage_parser(__doc__, "model_card", PATHS, ModelCardConfig).parse_args(argv)
    try:
        cfg = load_section(ModelCardConfig, "model_card", args.params)
    except ParamsError as e:
        raise SystemExit(f"model_card: {e}") from None
    info_path = Path(args.adapter) / TRAIN_INFO
    for path, stage in ((info_path, "train"), (Path(args.eval_json), "evaluate"),
                        (Path(args.dataset) / "README.md", "export_dataset")):
        if not path.is_file():
            raise SystemExit(f"model_card: {path} not found; run the {stage} stage first")
    ci = 0.95
    if Path(args.eval_stats).is_file():
        ci = float(((read_json(args.eval_stats).get("params") or {}).get("bootstrap") or {}).get("ci", ci))
    flat = read_json(args.eval_json)
    atomic_write_text(args.out, complete_card(read_json(info_path), flat, Path(args.dataset).name, cfg, ci))
    log.info("wrote %s (model-index: %d fine-tuned minus base differences with %d%% CIs)", args.out,
             len(eval_deltas(flat)), round(100 * ci))
    return 0


if __name__ == "__main__":
    sys.exit(main())
