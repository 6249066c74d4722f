"""make bench: every benchmark of the project in one run -> metrics/bench.json + a table.

    python -m bench.run_all --out metrics/bench.json [--teacher-dir models/teacher] [--quick]

Runs, one after the other in this process tree on this machine:
  train      ours vs the naive baseline (HF Trainer, pad to 512, fp32): useful tokens/s ratio, MFU
             against a matmul peak measured in the same run            (bench/bench_train.py)
  teacher    QA generation batched vs one prompt at a time, tokens/s    (bench/bench_teacher.py)
  generate   evaluation answers batched vs one question at a time        (bench/bench_generate.py)
  noop_repro `dvc repro` with nothing to do vs the sum of stage wall times of the last real run
  add_page   generate_qa on all pages but one (cold cache), then with the last page added: the
             second run's time vs the first, beside the new page's share of chunks
  chat       the chat server: time to first token and tokens/s per answer, 1 vs 4 concurrent
             streaming clients (bench/bench_chat.py; needs models/student, models/adapter)
Ratios are what to compare across machines; absolute times are reported beside them. The
machine (CPU model, cores, bf16 support, load average) is recorded with the results.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from policytune.core.params import load_section
from policytune.core.records import read_jsonl, write_json, write_jsonl
from policytune.dataset.qa import GenerateQAConfig

PY = sys.executable


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    flags = next((line for line in open("/proc/cpuinfo") if line.startswith("flags")), "")
    return {"cpu": cpu, "cores": os.cpu_count(), "avx512": "avx512f" in flags,
            "bf16_native": "avx512_bf16" in flags or "amx_bf16" in flags,
            "loadavg_start": list(os.getloadavg()), "python": platform.python_version()}


def run_bench(name: str, args: list[str], out_dir: Path) -> dict:
    out = out_dir / f"{name}.json"
    t0 = time.monotonic()
    p = subprocess.run([PY, "-m", f"bench.bench_{name}", str(out), *args], text=True, capture_output=True)
    sys.stderr.write(p.stdout[-4000:])
    if p.returncode != 0:
        return {"error": (p.stderr or p.stdout)[-1500:], "wall_s": round(time.monotonic() - t0, 1)}
    res = json.loads(out.read_text())
    res["wall_s"] = round(time.monotonic() - t0, 1)
    return res


def timed(cmd: list[str], cwd: Path | None = None) -> tuple[float, str]:
    t0 = time.monotonic()
    p = subprocess.run(cmd, cwd=cwd, text=True, capture_output=True)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {p.stderr[-1500:]}")
    return time.monotonic() - t0, p.stdout + p.stderr


def noop_repro() -> dict:
    secs, out = timed([PY, "-m", "dvc", "repro"])
    ran = [line for line in out.splitlines() if line.startswith("Running stage")]
    return {"noop_repro_s": round(secs, 2), "stages_run": len(ran)}


def add_page(teacher_dir: str) -> dict:
    """Cold generate_qa on all docs but the last, then rerun with the last doc's chunks added."""
    chunks = read_jsonl("data/chunks.jsonl")
    docs = sorted({c["doc_id"] for c in chunks})
    new_doc = docs[-1]
    with tempfile.TemporaryDirectory(prefix="bench-add-page-") as tmp:
        tmp = Path(tmp)
        params = yaml.safe_load(open("params.yaml"))
        params["generate_qa"] = {**(params.get("generate_qa") or {}), "backend": "local", "model_dir": teacher_dir}
        (tmp / "params.yaml").write_text(yaml.safe_dump(params))
        write_jsonl(tmp / "before.jsonl", [c for c in chunks if c["doc_id"] != new_doc])
        shutil.copy("data/chunks.jsonl", tmp / "after.jsonl")

        def gen(src: str) -> float:
            secs, _ = timed([PY, "-m", "stages.generate_qa", "--chunks", str(tmp / src), "--cache", str(tmp / "cache"),
                             "--out", str(tmp / "qa.jsonl"), "--rejected", str(tmp / "rej.jsonl"),
                             "--stats", str(tmp / f"stats_{src}"), "--params", str(tmp / "params.yaml")])
            return secs

        cold, incr = gen("before.jsonl"), gen("after.jsonl")
        runs = {name: json.loads((tmp / f"stats_{name}.jsonl").read_text()) for name in ("before", "after")}
        min_words = load_section(GenerateQAConfig, "generate_qa", tmp / "params.yaml").min_chunk_words

    def sent(cs: list[dict]) -> int:  # chunks long enough for generate_qa to send to the teacher
        return sum(len(str(c.get("text", "")).split()) >= min_words for c in cs)

    new_chunks = [c for c in chunks if c["doc_id"] == new_doc]
    keys = ("chunks_sent_to_model", "cache_hits", "teacher_tokens_generated", "teacher_seconds", "wall_s")
    return {"teacher": teacher_dir, "chunks": len(chunks), "new_page_chunks": len(new_chunks),
            "new_page_share": round(len(new_chunks) / len(chunks), 4),
            # the share of the teacher's work: chunks long enough to be sent
            "new_page_share_of_sent_chunks": round(sent(new_chunks) / max(1, sent(chunks)), 4),
            "cold_s": round(cold, 1), "incremental_s": round(incr, 1),
            "incremental_over_cold": round(incr / cold, 4), "cache_hits": runs["after"].get("cache_hits"),
            # per run: the stage's own counts; process time minus wall_s is start-up (imports, params)
            # and writing the outputs, teacher_seconds the model's generation time
            "cold_stats": {k: runs["before"].get(k) for k in keys},
            "incremental_stats": {k: runs["after"].get(k) for k in keys},
            "teacher_seconds_incremental_over_cold": round(
                runs["after"]["teacher_seconds"] / runs["before"]["teacher_seconds"], 4)
            if runs["before"].get("teacher_seconds") else None}


def headline(results: dict) -> list[tuple[str, str, str]]:
    rows = []
    tr = results.get("train", {})
    if "ratio_useful_tokens_per_s" in tr:
        mfu = tr.get("mfu", {})
        if isinstance(mfu, dict):  # MFU against the peak of the dtype the loop trained in
            mfu = next((v for k, v in mfu.items() if k.startswith("vs_peak_of_training_dtype")), mfu.get("vs_best_peak"))
        rows.append(("train: ours / naive useful tok/s", f"{tr['ratio_useful_tokens_per_s']}x", f"MFU {mfu}"))
    for name in ("teacher", "generate"):
        r = results.get(name, {})
        rows.append((f"{name}: batched / one at a time", json.dumps(_speedups(r))[:60], f"{r.get('wall_s', '?')} s"))
    nr = results.get("noop_repro", {})
    rows.append(("no-op dvc repro", f"{nr.get('noop_repro_s', '?')} s", f"{nr.get('stages_run', '?')} stages run"))
    for lv in results.get("chat", {}).get("levels", []):
        rows.append((f"chat: {lv['clients']} client(s)", f"TTFT {lv['ttft_median_s']} s",
                     f"{lv['decode_tok_s_mean']} tok/s per answer, {lv['aggregate_tok_s']} aggregate"))
    ap = results.get("add_page", {})
    rows.append(("add one page: incremental / cold", str(ap.get("incremental_over_cold", "?")),
                 f"new page share {ap.get('new_page_share', '?')} of chunks, "
                 f"{ap.get('new_page_share_of_sent_chunks', '?')} of those sent; teacher time "
                 f"{ap.get('teacher_seconds_incremental_over_cold', '?')}"))
    return rows


def _speedups(r: dict) -> dict:
    found = {}

    def walk(o, path=""):
        if isinstance(o, dict):
            for k, v in o.items():
                if k in ("speedup", "speedup_vs_single") and isinstance(v, (int, float)):
                    found[path or k] = v
                walk(v, f"{path}.{k}" if path else k)
        elif isinstance(o, list):
            for i, v in enumerate(o):
                walk(v, f"{path}[{i}]")

    walk(r)
    return found


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="metrics/bench.json")
    ap.add_argument("--teacher-dir", default="models/teacher", help="teacher for the teacher/add-page benches")
    ap.add_argument("--quick", action="store_true", help="short runs (smoke test of the harness)")
    ap.add_argument("--only", default="train,teacher,generate,noop_repro,add_page,chat")
    a = ap.parse_args(argv)
    out_dir = Path("bench/out")
    out_dir.mkdir(parents=True, exist_ok=True)
    only = set(a.only.split(","))
    results: dict = {"machine": machine()}
    q = a.quick
    if "train" in only:
        results["train"] = run_bench("train", ["--seconds", "20" if q else "75"], out_dir)
    if "teacher" in only:
        results["teacher"] = run_bench("teacher", ["--model-dir", a.teacher_dir, "--n", "4" if q else "16",
                                                   "--batch-sizes", "1,4" if q else "1,8,16",
                                                   "--single-n", "2" if q else "4"], out_dir)
    if "generate" in only:
        results["generate"] = run_bench("generate", ["--n", "8" if q else "30", "--batch-sizes", "8" if q else "16,32"], out_dir)
    if "noop_repro" in only:
        results["noop_repro"] = noop_repro()
    if "add_page" in only:
        results["add_page"] = add_page(a.teacher_dir)
    if "chat" in only:
        results["chat"] = run_bench("chat", ["--rounds", "1" if q else "3", "--max-tokens", "32" if q else "96"], out_dir)
    results["machine"]["loadavg_end"] = list(os.getloadavg())
    write_json(a.out, results)
    width = max(len(r[0]) for r in headline(results))
    print(f"\npolicytune bench on {results['machine']['cpu']} ({results['machine']['cores']} cores)")
    for name, ratio, note in headline(results):
        print(f"  {name:<{width}}  {ratio:>12}  {note}")
    print(f"details: {a.out}, bench/out/*.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
