"""Chat serving: time to first token and tokens/s per answer with 1 and with 4 concurrent clients.

    python bench/bench_chat.py bench/out/chat.json                 # models/student + models/adapter
    python bench/bench_chat.py out.json --base-only                # the base model (no adapter)
    python bench/bench_chat.py out.json --model-dir DIR --adapter-dir DIR --max-tokens 16 --rounds 1
    python bench/bench_chat.py out.json --burst 50                 # + 50 clients connecting at once
    python bench/bench_chat.py old.json --root /old/checkout --module stages.serve   # another checkout's server

Starts ``python -m policytune.app.serve`` on a free 127.0.0.1 port in its own process (as a user runs it;
RAG off), waits for its "serving ... on http://..." line, sends one warm-up request, then for each
concurrency level in --clients runs --rounds rounds of that many streaming requests at once
(distinct questions, greedy, ``stream_options.include_usage``), and stops the server by its pid.
The fine-tuned variant answers when an adapter is loaded, else the base model.

Per answer: ``ttft_s`` (request sent -> first streamed text; the streamer emits whole words, so
this is the first word), ``decode_tok_s`` (completion tokens after the first / time from the first
to the last text), ``e2e_tok_s`` (completion tokens / request time). Per level: median and mean
TTFT, mean per-answer rates, and ``aggregate_tok_s`` (all completion tokens / wall time of the
rounds): with continuous batching, 4 clients should see a little less per answer and much more in
aggregate than 1. Questions: data/split/test.jsonl when present, else data/sample_faq.jsonl.
Machine, load average and the server's engine counters (peak batch) are recorded beside them;
the server's log goes to OUT with the suffix .server.log.

``--burst N`` then opens N connections at once (threads released together by a barrier), each
sending one non-streaming request (``--burst-tokens`` tokens), and counts the outcomes: HTTP
status codes, and connection errors by kind (``ConnectionResetError``, ``RemoteDisconnected``...).
A server that keeps up answers each with 200 or 503 (queue full); a too-short listen backlog shows
as resets. ``--root``/``--module`` run another checkout's server (e.g. the code before a change)
with the same questions and models, so before/after figures compare like with like.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from policytune.core.records import read_jsonl, write_json  # noqa: E402


def questions(n: int, path: str | None = None) -> tuple[list[str], str]:
    for p in ([Path(path)] if path else [ROOT / "data/split/test.jsonl", ROOT / "data/sample_faq.jsonl"]):
        if p.is_file():
            qs = [r["question"] for r in read_jsonl(p) if r.get("question")]
            if qs:
                return qs[:n], str(p)
    raise SystemExit(f"no questions: {path or 'neither data/split/test.jsonl nor data/sample_faq.jsonl'} "
                     "has any")


def start_server(args, log_path: Path) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", args.module, "--port", "0", "--no-rag", "--model-dir", args.model_dir,
           "--max-batch", str(args.max_batch), "--max-tokens-limit", str(max(args.max_tokens, args.burst_tokens, 1))]
    cmd += ["--base"] if args.base_only else ["--adapter-dir", args.adapter_dir]
    root = Path(args.root).resolve()
    env = {**os.environ, "PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1"}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=log, text=True)
    line = proc.stdout.readline()  # printed once the models are loaded
    m = re.search(r"on (http://[\d.]+:\d+)/", line)
    if not m:
        proc.kill()
        raise SystemExit(f"the server did not start:\n{line}{log_path.read_text()[-3000:]}")
    return proc, m.group(1)


def stream_one(url: str, model: str, question: str, max_tokens: int) -> dict:
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": question}], "max_tokens": max_tokens,
                       "stream": True, "stream_options": {"include_usage": True}})
    conn = http.client.HTTPConnection(host, int(port), timeout=600)
    t0 = time.monotonic()
    conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:300]!r}")
    first = last = None
    usage = finish = None
    for raw in resp:  # one SSE line at a time
        line = raw.decode("utf-8").strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        c = json.loads(line[6:])
        if c.get("usage"):
            usage = c["usage"]
        for ch in c.get("choices", []):
            if ch["delta"].get("content"):
                last = time.monotonic()
                first = first or last
            finish = ch.get("finish_reason") or finish
    end = time.monotonic()
    conn.close()
    n = usage["completion_tokens"] if usage else 0
    decode_s = (last - first) if first and last else 0.0
    return {"ttft_s": round(first - t0, 4) if first else None, "seconds": round(end - t0, 4), "tokens": n,
            "decode_tok_s": round((n - 1) / decode_s, 2) if decode_s > 0 and n > 1 else None,
            "e2e_tok_s": round(n / (end - t0), 2), "finish": finish}


def level(url: str, model: str, qs: list[str], clients: int, rounds: int, max_tokens: int) -> dict:
    answers, wall = [], 0.0
    with ThreadPoolExecutor(clients) as pool:
        for r in range(rounds):
            batch = [qs[(r * clients + i) % len(qs)] for i in range(clients)]
            t0 = time.monotonic()
            answers += list(pool.map(lambda q: stream_one(url, model, q, max_tokens), batch))
            wall += time.monotonic() - t0
    ttft = [a["ttft_s"] for a in answers if a["ttft_s"] is not None]
    decode = [a["decode_tok_s"] for a in answers if a["decode_tok_s"]]
    tokens = sum(a["tokens"] for a in answers)
    return {"clients": clients, "answers": len(answers), "tokens": tokens, "wall_s": round(wall, 3),
            "ttft_median_s": round(statistics.median(ttft), 4) if ttft else None,
            "ttft_mean_s": round(statistics.mean(ttft), 4) if ttft else None,
            "decode_tok_s_mean": round(statistics.mean(decode), 2) if decode else None,
            "e2e_tok_s_mean": round(statistics.mean(a["e2e_tok_s"] for a in answers), 2),
            "aggregate_tok_s": round(tokens / wall, 2) if wall else None,
            "hit_max_tokens": sum(a["finish"] == "length" for a in answers), "per_answer": answers}


def burst(url: str, model: str, qs: list[str], clients: int, max_tokens: int, timeout: float = 120) -> dict:
    """``clients`` connections opened at once, one non-streaming request each: outcome counts."""
    host, port = url.removeprefix("http://").split(":")
    gate = threading.Barrier(clients)
    outcomes: list[str] = [""] * clients

    def one(i: int) -> None:
        body = json.dumps({"model": model, "max_tokens": max_tokens,
                           "messages": [{"role": "user", "content": qs[i % len(qs)]}]})
        conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
        try:
            gate.wait(timeout)
            conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            outcomes[i] = str(resp.status)
        except Exception as e:  # the measurement: how each connection ended
            outcomes[i] = type(e).__name__
        finally:
            conn.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 30)
    counts = Counter(outcomes)
    errors = sum(n for k, n in counts.items() if not k.isdigit())
    return {"clients": clients, "max_tokens": max_tokens, "wall_s": round(time.monotonic() - t0, 3),
            "outcomes": dict(sorted(counts.items())), "connection_errors": errors,
            "resets": counts.get("ConnectionResetError", 0),
            "answered_or_503": counts.get("200", 0) + counts.get("503", 0)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", help="JSON results path, e.g. bench/out/chat.json")
    ap.add_argument("--model-dir", default="models/student")
    ap.add_argument("--adapter-dir", default="models/adapter")
    ap.add_argument("--base-only", action="store_true", help="no adapter (also chosen when --adapter-dir is missing)")
    ap.add_argument("--clients", default="1,4", help="concurrency levels (default: %(default)s)")
    ap.add_argument("--rounds", type=int, default=4, help="rounds per level (default: %(default)s)")
    ap.add_argument("--max-tokens", type=int, default=128, help="max_tokens per answer (default: %(default)s)")
    ap.add_argument("--max-batch", type=int, default=8, help="server --max-batch (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS for the server (0 = torch default)")
    ap.add_argument("--questions", default=None, help="JSONL with a question field (default: data/split/test.jsonl, "
                                                      "else data/sample_faq.jsonl)")
    ap.add_argument("--burst", type=int, default=0, help="then N clients connecting at once (default: 0 = skip)")
    ap.add_argument("--burst-tokens", type=int, default=4, help="max_tokens of each burst request (default: %(default)s)")
    ap.add_argument("--root", default=str(ROOT), help="checkout whose server runs (default: this one)")
    ap.add_argument("--module", default="policytune.app.serve", help="its server module (default: %(default)s)")
    args = ap.parse_args(argv)
    args.model_dir, args.adapter_dir = str(Path(args.model_dir).resolve()), str(Path(args.adapter_dir).resolve())
    if not args.base_only and not (Path(args.adapter_dir) / "adapter_config.json").is_file():
        print(f"{args.adapter_dir} has no adapter: benchmarking the base model (--base-only)", file=sys.stderr)
        args.base_only = True
    levels = [int(c) for c in args.clients.split(",")]
    qs, source = questions(max(levels + [args.burst]) * args.rounds, args.questions)
    model = "base" if args.base_only else "finetuned"
    log_path = Path(args.out).with_suffix(".server.log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    proc, url = start_server(args, log_path)
    try:
        stream_one(url, model, qs[0], min(8, args.max_tokens))  # warm-up
        results = [level(url, model, qs, c, args.rounds, args.max_tokens) for c in levels]
        burst_result = burst(url, model, qs, args.burst, args.burst_tokens) if args.burst else None
        conn = http.client.HTTPConnection(url.removeprefix("http://"), timeout=30)
        conn.request("GET", "/healthz")
        engine = json.loads(conn.getresponse().read())["stats"]
    finally:
        proc.terminate()
        proc.wait(30)
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
               platform.processor())
    out = {"model": model, "model_dir": args.model_dir, "adapter_dir": None if args.base_only else args.adapter_dir,
           "max_tokens": args.max_tokens, "rounds": args.rounds, "questions": source, "server_engine": engine,
           "machine": {"cpu": cpu, "cores": os.cpu_count(), "loadavg_before": load_before,
                       "loadavg_after": os.getloadavg()},
           "server": {"root": str(Path(args.root).resolve()), "module": args.module}, "levels": results,
           "burst": burst_result}
    write_json(args.out, out)
    print(f"{model} ({args.model_dir}), max_tokens {args.max_tokens}, {args.rounds} rounds per level")
    print(f"{'clients':>7} {'answers':>7} {'TTFT med':>9} {'TTFT mean':>9} {'tok/s/answer':>12} "
          f"{'e2e tok/s':>9} {'aggregate tok/s':>15}")
    def fmt(v, width: int, digits: int) -> str:
        return f"{v:>{width}.{digits}f}" if v is not None else f"{'-':>{width}}"

    for r in results:
        print(f"{r['clients']:>7} {r['answers']:>7} {fmt(r['ttft_median_s'], 8, 3)}s "
              f"{fmt(r['ttft_mean_s'], 8, 3)}s {fmt(r['decode_tok_s_mean'], 12, 1)} "
              f"{fmt(r['e2e_tok_s_mean'], 9, 1)} {fmt(r['aggregate_tok_s'], 15, 1)}")
    if burst_result:
        print(f"burst of {args.burst}: {burst_result['outcomes']} ({burst_result['connection_errors']} connection "
              f"errors) in {burst_result['wall_s']:.1f}s")
    print(f"peak batch {engine['peak_batch']}; results in {args.out}")


if __name__ == "__main__":
    main()
