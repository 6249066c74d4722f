"""generate_qa: a teacher LLM turns each text chunk into question–answer pairs, with quality gates.

Reads   data/chunks.jsonl                 (chunk_id, doc_id, url, title, heading, text, ...)
        params.yaml: generate_qa          (policytune.dataset.qa.GenerateQAConfig: backend, model, prompt, gates)
        models/teacher, models/encoder     (local backend; encoder for grounding + dedupe)
Writes  data/qa.jsonl                     accepted pairs: qa_id, question, answer, chunk_id,
                                          doc_id, url, teacher {backend, model, model_sha, prompt_sha}
        data/qa_rejected.jsonl            every rejected chunk / output / pair, with reason and lineage
        data/stats/generate_qa.json       counts (-> metrics/data.json via data_metrics)
        data/qa_cache/<k[:2]>/<k>.json    content-addressed teacher outputs (DVC out, persist: true)

Pipeline per chunk: prompt (the chunk is DATA between <document> tags; instructions inside it do
not change the output contract) -> teacher (batched; reply pre-started with ``prefill``) ->
parse (strip prose and code fences, salvage the complete pairs of a cut-off list) -> schema
checks -> retry outputs with no valid pair (seeded sampling) up to ``max_retries`` -> grounding
(answer content words found in the chunk, and question+answer/chunk embedding cosine) -> de-duplication
of questions across the corpus (exact after normalisation, then near by embedding cosine).

Scale guard: before generating, the stage logs the chunks to send, the expected teacher tokens
(mean reply length in the cache) and an ETA (the engine's tokens/s from earlier runs, kept in
data/qa_cache/engine_rates.jsonl). ``budget_chunks`` / ``budget_minutes`` cap a run: chunks go
round-robin over documents (every document's first chunk before any second one), the rest are
counted as ``skipped_budget``, and a rerun with a larger budget continues from the cache.

Cache: one JSON file per (backend, model hash, prompt hash, generation params, chunk hash)
holding the raw attempts, written atomically as each batch finishes. A rerun re-parses the
cached raw text (so parser or gate changes apply without calling the teacher), calls the teacher
only for chunks without a usable entry, and does not even load the teacher when all are cached.
"""

from __future__ import annotations

import sys

from policytune.core.params import load_section, to_dict
from policytune.core.progress import get_logger
from policytune.core.records import read_jsonl, write_json, write_jsonl
from policytune.core.stage import stage_parser
from policytune.dataset.qa import GenerateQAConfig
from policytune.dataset.qa_generate import generate, qa_cache
from policytune.lm.backends import make_backend

PATHS = {"chunks": "data/chunks.jsonl", "out": "data/qa.jsonl", "rejected": "data/qa_rejected.jsonl",
         "stats": "data/stats/generate_qa.json", "cache": "data/qa_cache"}


def main(argv: list[str] | None = None) -> int:
    args = stage_parser(__doc__, "generate_qa", PATHS, GenerateQAConfig).parse_args(argv)
    log = get_logger("generate_qa")
    cfg = load_section(GenerateQAConfig, "generate_qa", args.params)
    log.info("params: %s", {k: v for k, v in to_dict(cfg).items() if k not in ("openai", "bedrock")})
    chunks = read_jsonl(args.chunks)
    backend = make_backend(cfg)
    try:
        res = generate(chunks, cfg, backend, qa_cache(args.cache), log=log)
    finally:
        backend.close()  # a llama_server backend stops its server here
    write_jsonl(args.out, res.qa)
    write_jsonl(args.rejected, res.rejected)
    write_json(args.stats, res.stats)
    log.info("wrote %s (%d), %s (%d), %s", args.out, len(res.qa), args.rejected, len(res.rejected), args.stats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
