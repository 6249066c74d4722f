"""raft: retrieval-augmented training rows (RAFT) beside the closed-book ones.

Reads   data/augment/train.jsonl   chat rows {qa_id, question, answer, chunk_id, messages, ...}
        data/split/val.jsonl       the val rows (early stopping sees the same mix)
        data/chunks.jsonl          {chunk_id, text, ...}: what is retrieved
        models/encoder             sentence-transformers folder (the evaluate stage's retriever)
        models/student             the base student (``answers: self``: it answers the oracle rows)
Params  ``raft`` (see :class:`policytune.dataset.raft.RaftConfig`).
Writes  data/raft/train.jsonl      closed-book rows and RAFT rows (``raft``: parent_qa_id, oracle,
                                   contexts (chunk ids in prompt order), gold_slot)
        data/raft/val.jsonl        the same for val
        data/stats/raft.json       counts per file (oracle / distractor rows, gold retrieved,
                                   rows without a source chunk, augmented copies skipped, answers
                                   the student's own / the teacher's), seconds

The user turn of a RAFT row is built by :func:`policytune.lm.chat_format.rag_question`, the
function the evaluate stage and the chatbot ask with, so train and inference share one layout.
See :mod:`policytune.dataset.raft` for how excerpts are chosen.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from policytune.core.params import ParamsError, load_section, to_dict
from policytune.core.progress import get_logger
from policytune.core.records import read_jsonl, write_json, write_jsonl
from policytune.core.stage import stage_parser
from policytune.dataset.raft import RaftConfig, build_rows, self_distill

PATHS = {"train": "data/augment/train.jsonl", "val": "data/split/val.jsonl", "chunks": "data/chunks.jsonl",
         "encoder": "models/encoder", "student": "models/student", "out_train": "data/raft/train.jsonl", "out_val": "data/raft/val.jsonl",
         "stats": "data/stats/raft.json"}

log = get_logger("raft")


def student_answerer(student_dir: str, cfg: RaftConfig):
    """(answer, accept) for :func:`policytune.dataset.raft.self_distill`: the base student's greedy
    answers, and the check that one states every key fact of the teacher's answer (and no other
    value for them), does not loop, and the teacher's answer has a key fact to check."""
    import transformers

    from policytune.evaluation.facts import fact_scores
    from policytune.evaluation.metrics import looping
    from policytune.lm.adapters import load_lm, load_tok
    from policytune.lm.generation import generate_continuous

    transformers.logging.set_verbosity_error()
    tok, model = load_tok(student_dir), load_lm(student_dir, "auto")

    def answer(prompts):
        return generate_continuous(model, tok, prompts, cfg.self_max_new_tokens, cfg.self_batch_size)

    def accept(mine: str, teacher: str) -> bool:
        f = fact_scores(mine, teacher)
        return f["n_ref_facts"] > 0 and f["all_facts"] == 1.0 and not f["contradicted"] and not looping(mine)

    return answer, accept


def main(argv: list[str] | None = None) -> int:
    args = stage_parser(__doc__, "raft", PATHS, RaftConfig).parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        cfg = load_section(RaftConfig, "raft", args.params)
    except ParamsError as e:
        raise SystemExit(f"raft: {e}") from None
    t0 = time.monotonic()
    for p in (args.train, args.val, args.chunks):
        if not Path(p).is_file():
            raise SystemExit(f"raft: {p} not found; run the stages before raft (dvc repro raft)")
    chunks = read_jsonl(args.chunks)
    embed = None
    if cfg.enabled:
        if not chunks:
            raise SystemExit(f"raft: {args.chunks} has no chunks to retrieve from")
        from policytune.lm.embedding import load_embedder

        embed = load_embedder(args.encoder)
    answerer = None
    if cfg.enabled and cfg.answers == "self":
        if not (Path(args.student) / "config.json").is_file():
            raise SystemExit(f"raft: {args.student} is not a model folder (answers: self needs the base student; "
                             "dvc repro prepare_models@student, or answers: teacher)")
        answerer = student_answerer(args.student, cfg)
    stats: dict = {"params": to_dict(cfg)}
    for what, src, dst in (("train", args.train, args.out_train), ("val", args.val, args.out_val)):
        out, counts = build_rows(read_jsonl(src), chunks, embed, cfg, what)
        if answerer is not None:
            t1 = time.monotonic()
            out, sd = self_distill(out, *answerer)
            counts.update(sd, self_seconds=round(time.monotonic() - t1, 1))
            log.info("%s: the student's own answer kept for %d oracle rows, the teacher's for %d (%d hit "
                     "self_max_new_tokens), %.0fs", what, sd["self_answers"], sd["teacher_answers"],
                     sd["self_truncated"], counts["self_seconds"])
        write_jsonl(dst, out)
        stats[what] = counts
        log.info("%s: %d rows in -> %d out (%d RAFT: %d oracle, %d distractor-only; gold chunk in the top %d "
                 "for %d; %d without a source chunk, %d augmented copies closed-book only)", what,
                 counts["rows_in"], counts["rows_out"], counts["raft_rows"], counts["oracle_rows"],
                 counts["distractor_rows"], cfg.top_k, counts["gold_retrieved"], counts["no_source_chunk"],
                 counts["augmented_skipped"])
    stats["seconds"] = round(time.monotonic() - t0, 2)
    write_json(args.stats, stats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
