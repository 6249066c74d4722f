"""evaluate: base vs fine-tuned answers to every test question, scored per example, with CIs.

Reads   data/split/test.jsonl      {qa_id, question, answer (the reference), chunk_id, ...}
        data/chunks.jsonl          {chunk_id, text, url, ...}: retrieval (``rag.enabled``) and the
                                   source chunk of each FAQ question (recall@k, coverage)
        data/split/train.jsonl     which chunks produced training pairs (coverage)
        data/general_skills.jsonl  40 general questions with accepted answers (``general_check``)
        models/student             the base model (plain Hugging Face folder)
        models/adapter             the LoRA adapter of the train stage (PEFT folder); when it
                                   holds ``policytune_train.json`` its ``chat_template_sha`` must equal
                                   the chat template's sha here, else the stage stops
        models/encoder             sentence-transformers folder: BERTScore backbone, embeddings
Params  ``evaluate`` (see :class:`EvaluateConfig`).
Writes  data/eval/answers.jsonl      {qa_id, model, question, reference, answer, gen, n_tokens,
                                     finish ("eos"|"length")[, retrieved]}; general-skill answers
                                     have model general_base|general_finetuned and general_correct
        data/eval/per_example.jsonl  {qa_id, model, fact_recall, all_facts, contradiction,
                                     bertscore_p/r/f1, cosine, relevance, token_f1, rouge_l, bleu,
                                     answer_len, ref_ppl, ref_nll, looping, facts_missing,
                                     facts_contradicted}
        data/eval/plots/<metric>.json  DVC plot data: per metric, every model's per-example values
                                     sorted (a quantile plot = the distribution), x = quantile
        metrics/eval.json            flat DVC keys <model>.<metric>.{mean,ci_low,ci_high},
                                     delta.<metric>.{mean,ci_low,ci_high} (fine-tuned - base, 95%
                                     paired bootstrap over questions) and the other comparisons,
                                     <model>.looping_answers, rag.recall_at_k, coverage.*,
                                     general.<model>.accuracy, general.delta.accuracy, n, counts
        data/stats/evaluate.json     timings (generation tokens/s per model), models, params

Models: ``base`` (the student) and ``finetuned`` (student + adapter, merged in memory) answer
with the same chat template, system prompt and generation params (greedy by default), longest
prompt first with left padding; with RAG on (the default), ``base_rag`` and ``finetuned_rag``
answer again with the encoder's top-k chunks in the prompt (four variants). Greedy decoding uses continuous batching (a finished answer
leaves the batch and a waiting question joins, so no compute is spent on finished rows);
sampling uses ``model.generate`` on static batches.

Metrics per (question, model):
- fact_recall / all_facts / contradiction: the reference's key facts (amounts, durations,
  dates, percentages, form and article ids, roles) that the answer states, whether it states
  all, and whether it states another value for a slot the reference fills
  (policytune.evaluation.facts);
- looping: the answer repeats a 4-gram 4+ times or hit max_new_tokens;
- BERTScore P/R/F1 (bert-score, the local encoder path as ``model_type``, no baseline rescale;
  bert-score has no tuned layer for all-MiniLM-L6-v2 and uses layer 5 for every 6-layer model in
  its table, e.g. distilbert-base-uncased, distilroberta-base, bert_uncased_L-6; we follow that);
- cosine of answer and reference embeddings, relevance = cosine of question and answer
  embeddings (the study's "relevance score"); both 0 for an empty answer, as BERTScore does;
- token-F1, ROUGE-L, BLEU (policytune.evaluation.metrics) and answer length in words;
- ref_nll / ref_ppl: mean negative log-likelihood (and its exp, the perplexity) of the
  reference answer's assistant tokens (answer + end-of-turn marker) given the same prompt.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from policytune.core.params import ParamsError, load_section, to_dict
from policytune.core.progress import get_logger
from policytune.core.records import read_jsonl, write_json
from policytune.core.stage import stage_parser
from policytune.evaluation.compare import evaluate, log_comparisons, write_outputs
from policytune.evaluation.config import EvaluateConfig, EvaluateError, check_config
from policytune.evaluation.general import read_general_set
from policytune.evaluation.scoring import Scorer
from policytune.lm.adapters import AdapterError, check_adapter, load_finetuned, load_lm, load_tok
from policytune.lm.chat_format import template_sha

PATHS = {"test": "data/split/test.jsonl", "chunks": "data/chunks.jsonl", "train": "data/split/train.jsonl",
         "general": "data/general_skills.jsonl", "out_dir": "data/eval", "metrics": "metrics/eval.json",
         "stats": "data/stats/evaluate.json"}

log = get_logger("evaluate")


def _load_config(params: str | None) -> EvaluateConfig:
    try:
        cfg = load_section(EvaluateConfig, "evaluate", params)
        check_config(cfg)
    except ParamsError as e:
        raise SystemExit(f"evaluate: {e}") from None
    return cfg


def _read_inputs(args, cfg: EvaluateConfig) -> dict:
    """Test rows (the first ``limit``), chunks (RAG, and the source chunk of FAQ questions),
    train rows (coverage) and the general-skill set (``general_check``)."""
    if not Path(args.test).is_file():
        raise SystemExit(f"evaluate: {args.test} not found; run the split stage first")
    rows = read_jsonl(args.test)
    if cfg.limit:
        rows = rows[:cfg.limit]
    chunks = read_jsonl(args.chunks) if Path(args.chunks).is_file() else None
    if cfg.rag.enabled and chunks is None:
        raise SystemExit(f"evaluate: {args.chunks} not found (rag.enabled needs the chunks); run extract")
    train = read_jsonl(args.train) if Path(args.train).is_file() else None
    general = None
    if cfg.general_check:
        try:
            general = read_general_set(args.general)
        except (OSError, ValueError) as e:
            raise SystemExit(f"evaluate: general-skill set: {e} (general_check: false skips the check)") from None
    return {"rows": rows, "chunks": chunks, "train_rows": train, "general": general}


def main(argv: list[str] | None = None) -> int:
    args = stage_parser(__doc__, "evaluate", PATHS, EvaluateConfig).parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    t_start = time.monotonic()
    cfg = _load_config(args.params)
    inputs = _read_inputs(args, cfg)
    rows = inputs["rows"]
    import transformers

    transformers.logging.set_verbosity_error()
    try:
        tokenizer = load_tok(cfg.base_dir)
        train_info = check_adapter(cfg.adapter_dir, tokenizer)
        scorer = Scorer(cfg.encoder_dir, cfg.bertscore.num_layers, cfg.bertscore.batch_size)
        log.info("%d test questions; models: base=%s, finetuned=%s + %s (template %s); rag %s",
                 len(rows), cfg.base_dir, cfg.base_dir, cfg.adapter_dir, template_sha(tokenizer),
                 f"on (top {cfg.rag.top_k})" if cfg.rag.enabled else "off")
        answers, per_example, flat, stats = evaluate(
            rows, cfg, scorer,
            base_lm=lambda: load_lm(cfg.base_dir, cfg.dtype),
            finetuned_lm=lambda: load_finetuned(cfg.base_dir, cfg.adapter_dir, cfg.dtype, merge=cfg.merge_adapter),
            tokenizer=tokenizer, chunks=inputs["chunks"], train_rows=inputs["train_rows"],
            general=inputs["general"])
    except (EvaluateError, AdapterError) as e:
        raise SystemExit(f"evaluate: {e}") from None
    models = list(stats["models"])
    write_outputs(Path(args.out_dir), Path(args.metrics), answers, per_example, flat, models)
    import torch

    stats.update({"questions": len(rows), "template_sha": template_sha(tokenizer), "train_info": train_info,
                  "torch_threads": torch.get_num_threads(), "seconds": round(time.monotonic() - t_start, 2),
                  "params": to_dict(cfg)})
    write_json(args.stats, stats)
    log_comparisons(flat)
    log.info("done in %.1fs: %s, %s", stats["seconds"], Path(args.out_dir) / "answers.jsonl", args.metrics)
    return 0


if __name__ == "__main__":
    sys.exit(main())
