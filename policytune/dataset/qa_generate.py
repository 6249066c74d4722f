"""generate_qa's loop: chunks -> teacher replies (cached, retried) -> gated, grounded, de-duplicated pairs.

Cache: one JSON file per (backend, model hash, prompt hash, generation params, chunk hash)
holding the raw attempts, written atomically as each reply arrives. A rerun re-parses the
cached raw text (so parser or gate changes apply without calling the teacher), calls the teacher
only for chunks without a usable entry, and does not even load the teacher when all are cached.

:func:`generate` runs the steps in order: plan (skip short chunks, look up the cache), ask the
teacher in rounds (round k re-asks every chunk whose attempts so far all failed, seeded
sampling), collect candidates (the last attempt's valid pairs; failed retried attempts are kept
as rejects), ground (answer content words in the chunk, pair/chunk encoder cosine), de-duplicate
(exact after normalisation, then near by encoder cosine), count.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from policytune.core.cache import JsonCache
from policytune.core.progress import Progress, get_logger
from policytune.core.records import atomic_write_text, sha256_text, stable_id
from policytune.dataset.qa import (GenerateQAConfig, build_messages, chunk_title, evaluate_attempt,
                                   normalise_for_dedupe, printable, prompt_sha, token_overlap)
from policytune.lm.backends import Backend
from policytune.lm.embedding import Embed, load_embedder

# --------------------------------------------------------------------------------------------
# Cache


def valid_entry(entry: dict) -> bool:
    """The shape :func:`_ask_round` writes and a rerun reads: ``key``, ``key_parts`` (a dict
    whose hash is the key, with the backend's ``model`` fingerprint as a string) and
    ``attempts``, a list of {"text": str, "finish_reason": str, "n_tokens": int >= 0, ...}.
    Anything else (``[]``, missing keys, wrong types) is a corrupt entry: asked again."""
    parts, attempts = entry.get("key_parts"), entry.get("attempts")
    if not isinstance(parts, dict) or not isinstance(parts.get("model"), str) or not isinstance(attempts, list):
        return False
    if sha256_text(json.dumps(parts, sort_keys=True)) != entry.get("key"):
        return False  # key_parts are not the ones this key was made from
    for att in attempts:
        if not isinstance(att, dict) or not isinstance(att.get("text"), str) \
                or not isinstance(att.get("finish_reason"), str):
            return False
        n = att.get("n_tokens", 0)
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            return False
    return True


def qa_cache(root: str | Path) -> JsonCache:
    """The teacher-reply cache (``data/qa_cache``): entries carry their key, indent-1 JSON; an
    entry of the wrong shape (:func:`valid_entry`) is counted in ``cache_corrupt`` and regenerated."""
    return JsonCache(root, check_key=True, fmt="indent1", validate=valid_entry)


def cache_key_parts(chunk: dict, cfg: GenerateQAConfig, backend: Backend) -> dict:
    return {
        "v": 1,
        "backend": backend.name,
        "model": backend.fingerprint(),
        "prompt_sha": prompt_sha(cfg),
        "gen": {"max_new_tokens": cfg.max_new_tokens, "temperature": cfg.temperature, "seed": cfg.seed,
                "retry_temperature": cfg.retry_temperature},
        "chunk_sha": stable_id(chunk_title(chunk), str(chunk.get("text", "")).strip(), n=64),
    }


# --------------------------------------------------------------------------------------------
# Grounding and de-duplication


def near_duplicates(emb, threshold: float) -> list[int | None]:
    """Greedy in order: for each row, the index of an earlier *kept* row with cosine >= threshold, else None."""
    import numpy as np

    emb = np.asarray(emb, dtype=np.float32)
    kept: list[int] = []
    out: list[int | None] = []
    for i in range(len(emb)):
        if kept:
            sims = emb[kept] @ emb[i]
            j = int(np.argmax(sims))
            if sims[j] >= threshold:
                out.append(kept[j])
                continue
        kept.append(i)
        out.append(None)
    return out


# --------------------------------------------------------------------------------------------
# Core


@dataclass
class Result:
    qa: list[dict]
    rejected: list[dict]
    stats: dict


def _lineage(chunk: dict) -> dict:
    return {"chunk_id": chunk.get("chunk_id"), "doc_id": chunk.get("doc_id"), "url": chunk.get("url")}


def _plan(chunks: list[dict], cfg: GenerateQAConfig, backend: Backend, cache: JsonCache, stats: Counter,
          rejected: list[dict]) -> tuple[list[tuple[dict, str]], dict[str, dict], dict[str, dict]]:
    """Step 1: which chunks go to the teacher, and what the cache already holds for them."""
    work: list[tuple[dict, str]] = []      # (chunk, cache key), corpus order
    entries: dict[str, dict] = {}          # key -> cache entry (chunks with identical text share one)
    first_chunk: dict[str, dict] = {}
    for c in chunks:
        if len(str(c.get("text", "")).split()) < cfg.min_chunk_words:
            stats["chunks_skipped_short"] += 1
            rejected.append({"kind": "chunk", "reason": "chunk_too_short", "retried": False,
                             "detail": f"< {cfg.min_chunk_words} words", **_lineage(c)})
            continue
        parts = cache_key_parts(c, cfg, backend)
        key = sha256_text(json.dumps(parts, sort_keys=True))
        if key not in entries:
            entries[key] = cache.get(key) or {"key": key, "key_parts": parts, "chunk_id": c.get("chunk_id"),
                                              "attempts": []}
            first_chunk[key] = c
        work.append((c, key))
    return work, entries, first_chunk


def _first_valid_attempt(entry: dict, chunk_text: str, cfg: GenerateQAConfig, n_attempts: int) -> int | None:
    """Index of the first allowed attempt with at least one valid pair, else None."""
    for k, att in enumerate(entry["attempts"][:n_attempts]):
        if evaluate_attempt(att["text"], att["finish_reason"], chunk_text, cfg)[0]:
            return k
    return None


def _ask_round(k: int, todo: list[str], temp: float, seed: int, entries: dict[str, dict],
               first_chunk: dict[str, dict], status: dict[str, int | None], cfg: GenerateQAConfig,
               backend: Backend, cache: JsonCache, n_attempts: int, prog: Progress) -> None:
    """One round of step 2: attempt ``k`` for every chunk in ``todo``, each reply cached as it arrives."""

    def save(i: int, o, k=k, todo=todo, temp=temp, seed=seed) -> None:
        key = todo[i]
        entry = entries[key]
        # stored as valid_entry reads it back: text a writable string, whatever the backend gave
        text = printable(o.text) if isinstance(o.text, str) else ("" if o.text is None else repr(o.text))
        entry["attempts"].append({"attempt": k, "temperature": temp, "seed": seed, "text": text,
                                  "n_tokens": o.n_tokens, "finish_reason": o.finish_reason,
                                  "seconds": round(o.seconds, 3)})
        ok = evaluate_attempt(text, o.finish_reason, first_chunk[key]["text"], cfg)[0]
        if ok:
            status[key] = k
        entry["pairs"] = ok
        entry["status"] = "ok" if ok else ("failed" if k + 1 >= n_attempts else "retry")
        cache.put(key, entry)  # saved as each reply arrives: a killed run resumes here
        if ok or k + 1 >= n_attempts:
            prog.update(1)

    # One call per round: the local backend keeps batch_size replies decoding at once
    # (continuous batching, shared prompt prefix prefilled once); remote backends run
    # their own concurrency. Each reply is cached the moment it arrives.
    backend.chat([build_messages(first_chunk[key], cfg) for key in todo], max_new_tokens=cfg.max_new_tokens,
                 temperature=temp, seed=seed, prefill=cfg.prefill or None, on_result=save)


def _ask_teacher(need: list[str], entries: dict[str, dict], first_chunk: dict[str, dict],
                 status: dict[str, int | None], cfg: GenerateQAConfig, backend: Backend, cache: JsonCache,
                 n_attempts: int, stats: Counter, log) -> None:
    """Step 2: generate in rounds: round k asks again for every chunk whose attempts so far all failed.
    With ``budget_minutes`` each round goes out in slices of 4 batches and no slice starts after
    the budget is spent (``need`` is in round-robin document order, so early slices cover every
    document)."""
    retry_temp = max(cfg.temperature, cfg.retry_temperature)
    prog = Progress(log, "teacher replies", total=len(need), every_s=10.0)
    t0 = time.monotonic()
    for k in range(n_attempts):
        todo = [key for key in need if status[key] is None and len(entries[key]["attempts"]) == k]
        if not todo:
            continue
        if k > 0:
            stats["retries"] += len(todo)
            log.info("retry round %d: %d chunks without a valid pair", k, len(todo))
        temp, seed = (cfg.temperature if k == 0 else retry_temp), cfg.seed + k
        step = len(todo) if not cfg.budget_minutes else 4 * cfg.batch_size
        for i in range(0, len(todo), step):
            if cfg.budget_minutes and time.monotonic() - t0 > 60 * cfg.budget_minutes:
                log.warning("generate_qa.budget_minutes=%s spent: %d chunks of round %d not sent",
                            cfg.budget_minutes, len(todo) - i, k)
                return
            _ask_round(k, todo[i:i + step], temp, seed, entries, first_chunk, status, cfg, backend, cache,
                       n_attempts, prog)


def round_robin(keys: list[str], doc_of: dict[str, str]) -> list[str]:
    """``keys`` reordered so that every document's first chunk comes before any document's second:
    a budget that stops early still covers every document."""
    by_doc: dict[str, list[str]] = {}
    for key in keys:
        by_doc.setdefault(doc_of[key], []).append(key)
    out: list[str] = []
    queues = list(by_doc.values())
    depth = 0
    while len(out) < len(keys):
        for q in queues:
            if depth < len(q):
                out.append(q[depth])
        depth += 1
    return out


def _forecast(need: list[str], entries: dict[str, dict], cfg: GenerateQAConfig, backend: Backend,
              rates: dict, log) -> dict:
    """Chunks to send, expected teacher tokens and an ETA, before anything is generated: mean reply
    length of the cached replies (else 75% of max_new_tokens), the engine's rate from earlier runs
    (``engine_rates.jsonl`` in the cache), times the expected attempts."""
    lengths = [a.get("n_tokens", 0) for e in entries.values() for a in e["attempts"] if a.get("n_tokens")]
    per_reply = sum(lengths) / len(lengths) if lengths else 0.75 * cfg.max_new_tokens
    tokens = int(len(need) * per_reply)
    rate = rates.get(backend.fingerprint())
    eta = tokens / rate if rate else None
    log.info("to the teacher: %d chunks, ~%d tokens to generate (%s per reply), ETA %s%s", len(need), tokens,
             f"{per_reply:.0f} tokens" + (" measured on the cache" if lengths else " assumed"),
             f"{eta / 60:.1f} min at {rate:.1f} tokens/s measured before" if eta is not None
             else "unknown (no earlier run of this engine; the progress line gives one after the first replies)",
             "" if not cfg.budget_chunks and not cfg.budget_minutes else
             f"; budget {cfg.budget_chunks or 'no'} chunks, {cfg.budget_minutes or 'no'} minutes")
    return {"chunks": len(need), "expected_tokens": tokens,
            "eta_s": round(eta, 1) if eta is not None else None}


def _rates_path(cache: JsonCache) -> Path:
    return Path(cache.root) / "engine_rates.jsonl"


def _read_rates(cache: JsonCache) -> dict:
    out = {}
    p = _rates_path(cache)
    if p.is_file():
        for line in p.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                row = json.loads(line)
                out[str(row["engine"])] = float(row["tokens_per_s"])
            except (ValueError, KeyError, TypeError):
                continue      # a damaged line is ignored, never trusted
    return out


def _write_rate(cache: JsonCache, rates: dict, engine: str, tokens: int, secs: float) -> None:
    if tokens < 50 or secs <= 0:
        return
    rates = {**rates, engine: round(tokens / secs, 3)}
    text = "".join(json.dumps({"engine": k, "tokens_per_s": v}) + "\n" for k, v in sorted(rates.items()))
    atomic_write_text(_rates_path(cache), text)


def _skip_unsent(work: list[tuple[dict, str]], entries: dict[str, dict], rejected: list[dict],
                 stats: Counter) -> list[tuple[dict, str]]:
    """Chunks the budget left without any reply: out of the work, counted as skipped_budget."""
    kept = []
    for c, key in work:
        if entries[key]["attempts"]:
            kept.append((c, key))
            continue
        stats["chunks_skipped_budget"] += 1
        rejected.append({"kind": "chunk", "reason": "skipped_budget", "retried": False,
                         "detail": "not sent: generate_qa.budget_chunks / budget_minutes reached", **_lineage(c)})
    return kept


def _candidates(work: list[tuple[dict, str]], entries: dict[str, dict], status: dict[str, int | None],
                cfg: GenerateQAConfig, n_attempts: int, teacher: dict, rejected: list[dict],
                stats: Counter) -> tuple[list[tuple[dict, dict]], Counter]:
    """Step 3: the final attempt of every chunk gives its candidates; failed attempts that were
    retried are kept (retried: true) as evidence of what the teacher got wrong."""
    candidates = []  # (chunk, pair)
    retried_by_reason: Counter = Counter()
    for c, key in work:
        atts = entries[key]["attempts"][:n_attempts]
        last = status[key] if status[key] is not None else len(atts) - 1
        for k, att in enumerate(atts[:last + 1]):
            pairs, rej = evaluate_attempt(att["text"], att["finish_reason"], c["text"], cfg)
            retried = k < last
            for r in rej:
                rejected.append({**r, "retried": retried, "attempt": k, **_lineage(c), "teacher": teacher})
                if retried:
                    retried_by_reason[r["reason"]] += 1
            if k == last:
                stats["pairs_generated"] += len(pairs) + sum(1 for r in rej if r["kind"] == "pair")
                stats["outputs_truncated"] += int(att["finish_reason"] == "length")
                candidates += [(c, p) for p in pairs]
        stats["cached_tokens"] += sum(a.get("n_tokens", 0) for a in atts)
    return candidates, retried_by_reason


def _ground(candidates: list[tuple[dict, dict]], cfg: GenerateQAConfig, embed: Embed | None, teacher: dict,
            rejected: list[dict]) -> list[tuple[dict, dict, dict]]:
    """Step 4: grounding: the answer's content words are in the chunk, and the encoder finds the pair
    (question + answer: a bare "30 days" is too short to compare) on the chunk's topic."""
    accepted: list[tuple[dict, dict, dict]] = []
    if candidates:
        import numpy as np

        pair_emb = embed([f'{p["question"]} {p["answer"]}' for _, p in candidates])
        uniq_chunks = list({id(c): c for c, _ in candidates}.values())
        chunk_emb = embed([c["text"] for c in uniq_chunks])
        chunk_index = {id(c): i for i, c in enumerate(uniq_chunks)}
        for i, (c, p) in enumerate(candidates):
            overlap = token_overlap(p["answer"], c["text"])
            cos = float(np.dot(pair_emb[i], chunk_emb[chunk_index[id(c)]]))
            scores = {"overlap": round(overlap, 3), "pair_cosine": round(cos, 3)}
            if overlap < cfg.min_answer_overlap or cos < cfg.min_pair_cosine:
                detail = ("overlap" if overlap < cfg.min_answer_overlap else "") + (
                    "+pair_cosine" if cos < cfg.min_pair_cosine else "")
                rejected.append({"kind": "pair", "reason": "not_grounded", "detail": detail.strip("+"),
                                 "retried": False, **p, "scores": scores, **_lineage(c), "teacher": teacher})
            else:
                accepted.append((c, p, scores))
    return accepted


def _dedupe(accepted: list[tuple[dict, dict, dict]], cfg: GenerateQAConfig, embed: Embed | None, teacher: dict,
            rejected: list[dict]) -> list[dict]:
    """Step 5: de-duplicate questions over the whole corpus, first occurrence wins."""
    qa: list[dict] = []
    seen: dict[str, str] = {}
    unique: list[dict] = []
    for c, p, scores in accepted:
        row = {"qa_id": stable_id(c.get("chunk_id"), p["question"]), "question": p["question"],
               "answer": p["answer"], **_lineage(c), "teacher": teacher, "grounding": scores}
        norm = normalise_for_dedupe(p["question"])
        if norm in seen:
            rejected.append({"kind": "pair", "reason": "duplicate_exact", "retried": False,
                             "duplicate_of": seen[norm], **{k: v for k, v in row.items() if k != "qa_id"}})
            continue
        seen[norm] = row["qa_id"]
        unique.append(row)
    if unique and cfg.dedupe_cosine < 1.0:
        q_emb = embed([r["question"] for r in unique])
        for r, dup in zip(unique, near_duplicates(q_emb, cfg.dedupe_cosine)):
            if dup is None:
                qa.append(r)
            else:
                rejected.append({"kind": "pair", "reason": "duplicate_near", "retried": False,
                                 "duplicate_of": unique[dup]["qa_id"], **{k: v for k, v in r.items() if k != "qa_id"}})
    else:
        qa = unique
    return qa


def _counts(chunks: list[dict], n_gen_chunks: int, qa: list[dict], rejected: list[dict], stats: Counter,
            retried_by_reason: Counter, cache: JsonCache, backend: Backend, psha: str,
            t_start: float) -> tuple[dict, Counter]:
    """Step 6: the stats (data/stats/generate_qa.json) and the final rejects by reason."""
    final_rej = Counter(r["reason"] for r in rejected if not r.get("retried"))
    secs = stats["teacher_seconds"]
    out = {
        "chunks": len(chunks),
        "chunks_skipped_short": stats["chunks_skipped_short"],
        "chunks_skipped_budget": stats["chunks_skipped_budget"],
        "chunks_sent_to_model": stats["chunks_sent_to_model"],
        "cache_hits": stats["cache_hits"],
        "cache_partial": stats["cache_partial"],
        "cache_corrupt": cache.corrupt,
        "model_calls": backend.stats["prompts"],
        "retries": stats["retries"],
        "retried_by_reason": dict(sorted(retried_by_reason.items())),
        "pairs_generated": stats["pairs_generated"],
        "accepted": len(qa),
        "accepted_per_chunk": round(len(qa) / n_gen_chunks, 3) if n_gen_chunks else 0.0,
        "acceptance_rate": round(len(qa) / stats["pairs_generated"], 3) if stats["pairs_generated"] else 0.0,
        "rejected": sum(final_rej.values()),
        "rejected_by_reason": dict(sorted(final_rej.items())),
        "duplicates_removed": final_rej["duplicate_exact"] + final_rej["duplicate_near"],
        "outputs_truncated": stats["outputs_truncated"],
        "chunks_without_pairs": n_gen_chunks - len({r["chunk_id"] for r in qa}),
        "teacher_tokens_generated": stats["teacher_tokens_generated"],
        "teacher_seconds": secs,
        "teacher_tokens_per_s": round(stats["teacher_tokens_generated"] / secs, 2) if secs > 0 else 0.0,
        "cached_tokens": stats["cached_tokens"],
        "wall_s": round(time.monotonic() - t_start, 2),
        "teacher": {"backend": backend.name, "model": backend.model_id, "prompt_sha": psha},
    }
    return out, final_rej


def generate(chunks: list[dict], cfg: GenerateQAConfig, backend: Backend, cache: JsonCache,
             embed: Embed | None = None, log=None) -> Result:
    """Records in, records out. ``embed`` defaults to the encoder in ``cfg.encoder_dir`` (loaded lazily)."""
    log = log or get_logger("generate_qa")
    t_start = time.monotonic()
    psha = prompt_sha(cfg)
    teacher = {"backend": backend.name, "model": backend.model_id, "model_sha": "", "prompt_sha": psha}
    rejected: list[dict] = []
    stats: Counter = Counter()
    n_attempts = cfg.max_retries + 1

    # 1. Which chunks go to the teacher, and what the cache already holds for them.
    work, entries, first_chunk = _plan(chunks, cfg, backend, cache, stats, rejected)
    if work:
        teacher["model_sha"] = sha256_text(entries[work[0][1]]["key_parts"]["model"])[:16]

    status = {key: _first_valid_attempt(entries[key], first_chunk[key]["text"], cfg, n_attempts) for key in entries}
    need = [key for key in entries if status[key] is None and len(entries[key]["attempts"]) < n_attempts]
    stats["cache_hits"] = sum(1 for c, key in work if key not in need)
    need = round_robin(need, {key: str(first_chunk[key].get("doc_id")) for key in need})
    if cfg.budget_chunks and len(need) > cfg.budget_chunks:
        log.warning("generate_qa.budget_chunks=%d: %d of %d chunks go to the teacher this run (round-robin over "
                    "documents); the rest are skipped_budget", cfg.budget_chunks, cfg.budget_chunks, len(need))
        need = need[:cfg.budget_chunks]
    stats["cache_partial"] = sum(1 for key in need if entries[key]["attempts"])
    stats["chunks_sent_to_model"] = sum(1 for c, key in work if key in set(need))
    log.info("%d chunks: %d from cache, %d to the teacher (%s %s)", len(chunks), stats["cache_hits"],
             stats["chunks_sent_to_model"], backend.name, backend.model_id)

    # 2. Generate in rounds (after a forecast), within the budget.
    tokens0, secs0 = backend.stats["generated_tokens"], backend.stats["seconds"]
    rates = _read_rates(cache)
    forecast = _forecast(need, entries, cfg, backend, rates, log) if need else None
    if need:
        _ask_teacher(need, entries, first_chunk, status, cfg, backend, cache, n_attempts, stats, log)
    stats["teacher_tokens_generated"] = backend.stats["generated_tokens"] - tokens0
    stats["teacher_seconds"] = round(backend.stats["seconds"] - secs0, 3)
    if need:
        _write_rate(cache, rates, backend.fingerprint(), stats["teacher_tokens_generated"], stats["teacher_seconds"])
    work = _skip_unsent(work, entries, rejected, stats)
    sent = set(need)
    stats["chunks_sent_to_model"] = sum(1 for c, key in work if key in sent)

    # 3. Candidates, 4. grounding, 5. de-duplication.
    candidates, retried_by_reason = _candidates(work, entries, status, cfg, n_attempts, teacher, rejected, stats)
    if candidates and embed is None:
        embed = load_embedder(cfg.encoder_dir)
    accepted = _ground(candidates, cfg, embed, teacher, rejected)
    qa = _dedupe(accepted, cfg, embed, teacher, rejected)

    # 6. Counts.
    n_gen_chunks = len(work)  # chunks long enough to ask about
    out, final_rej = _counts(chunks, n_gen_chunks, qa, rejected, stats, retried_by_reason, cache, backend, psha,
                             t_start)
    log.info("accepted %d of %d pairs from %d chunks; rejected %s", len(qa), out["pairs_generated"],
             n_gen_chunks, dict(final_rej) or "none")
    return Result(qa=qa, rejected=rejected, stats=out)
