"""Benchmark: the study's naive fine-tuning loop vs the policytune train stage, same data, same run.

    python -m bench.bench_train [OUT.json] [--base models/student] [--seconds 75]

(a) naive baseline, as in the reference study's example: HF ``Trainer``, every example padded
    to ``max_length`` (512), fp32, batch of 4, LoRA r=8 on q/v, loss on assistant tokens;
(c) the tuned baseline a user would write today (:func:`run_tuned`): HF ``Trainer`` in the train
    stage's dtype, dynamic padding, ``group_by_length`` batches, loss on assistant tokens, the same
    LoRA (r, modules, top layers) as ours, rows per batch = ``train.batch_tokens`` / mean row;
(b) the train stage's own loop (:func:`policytune.training.loop.fit`) with the ``train`` defaults of
    :class:`policytune.training.config.TrainConfig` (length-grouped token-budget batches, shared prefix run
    once, logits only at labelled positions, bf16 where native else fp32).

Both train on the same rows: data/augment/train.jsonl if it exists, else synthetic policy-like
QA rows (the sample FAQ plus templated HR/finance/clinical/AI-law questions). Each run trains
for ``--seconds`` of wall time after a warm-up step; the first step is not timed.

Rows longer than ``--max-length`` (default ``train.max_length``) are dropped; the naive baseline
trains only on the rows that fit its 512. ``--data data/raft/train.jsonl`` measures on the
retrieval-augmented rows.

Printed and written to OUT.json: useful tokens/s for each (useful = loss-bearing assistant
tokens, never padding), their ratio, bf16 and fp32 2048x2048 matmul peaks measured in this
run, and MFU = 4 x base params x useful tokens/s / peak (LoRA on a frozen base costs about
4 x params FLOPs per token: forward 2, backward to the activations 2). The load average is
recorded before and after each phase: on a shared machine the numbers are only as good as it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from policytune.lm.chat_format import to_messages  # noqa: E402
from policytune.core.records import read_jsonl  # noqa: E402
from policytune.training.config import TrainConfig  # noqa: E402
from policytune.training.dist import Dist  # noqa: E402
from policytune.training.encode import IGNORE, encode_rows  # noqa: E402
from policytune.training.loop import fit  # noqa: E402
from policytune.training.lora import add_lora, compile_layers, load_base_model, load_tokenizer  # noqa: E402


def load_state() -> dict:
    return {"loadavg_1m": round(os.getloadavg()[0], 2), "time": time.strftime("%H:%M:%S")}


# ---------------------------------------------------------------------------------------------
# matmul peak
# ---------------------------------------------------------------------------------------------

def matmul_peak(dtype: torch.dtype, n: int = 2048, seconds: float = 3.0) -> dict:
    """Best GFLOP/s of an n x n matmul (best of several timed repeats)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    t = time.perf_counter()
    a @ b  # warm-up (and a time estimate: emulated bf16 can be 100x slower)
    first = time.perf_counter() - t
    best, reps, t_end = first, 1, time.perf_counter() + seconds
    while first < 1.0 and time.perf_counter() < t_end and reps < 50:
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
        reps += 1
    return {"n": n, "gflops": round(2 * n ** 3 / best / 1e9, 1), "repeats": reps}


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------

TOPICS = {
    "travel": ["hotel", "meal allowance", "train ticket", "taxi", "per diem", "mileage"],
    "leave": ["annual leave", "sick leave", "parental leave", "carry-over", "unpaid leave"],
    "procurement": ["tender", "purchase order", "supplier vetting", "contract sign-off"],
    "clinical": ["patient records", "consent form", "research opt-out", "incident report"],
    "AI law": ["high-risk system", "transparency notice", "conformity assessment",
               "incident notification", "human oversight", "training data governance"],
    "security": ["password", "laptop encryption", "data breach", "visitor badge"],
}
ROLES = ["an employee", "a manager", "a contractor", "a nurse", "a provider", "a deployer"]
FORMS = ["FIN-03", "HR-12", "CL-07", "PR-21", "SEC-02", "AI-05"]
QUESTIONS = [
    "What does the policy say about {t} for {r}?",
    "As {r}, how do I handle {t} under the {d} policy?",
    "Is there a deadline for {t}, and who approves it?",
    "How much can I claim for {t} on a trip to {c}?",
    "Which form do I use for {t}, and where do I send it?",
    "Under the {d} rules, what happens if {t} is late or missing?",
    "Does the {d} policy allow exceptions for {t}?",
    "What are the obligations of {r} regarding {t}?",
]
ANSWERS = [
    "Use form {f}. It must be submitted within {n} days and approved by your line manager.",
    "The limit for {t} is {m} EUR, taxes included; anything above needs written approval from "
    "the {d} controller before the expense is made.",
    "{r_cap} must document {t} and keep the records for {n} years. The {d} team reviews them "
    "every quarter, and missing records are reported as an incident.",
    "Yes, but only with prior approval. Send form {f} to the {d} office at least {n} working "
    "days in advance; late requests are refused unless the director signs an exception.",
    "Within {n} calendar days. After that the request is rejected, except where the {d} "
    "committee agrees that the delay was outside your control.",
    "The policy requires a written notice for {t}, a named owner, and a review every {n} "
    "months. Providers must also keep logs that allow the authority to trace decisions, and "
    "must inform users in plain language that they are interacting with an automated system.",
]
CITIES = ["Lyon", "Geneva", "Berlin", "Madrid", "Vienna", "Oslo", "Lisbon"]


def synthetic_rows(n: int, seed: int = 0) -> list[dict]:
    """Policy-like chat rows: the sample FAQ (real pairs) plus templated ones."""
    rng = random.Random(seed)
    rows = []
    faq = Path("data/sample_faq.jsonl")
    if faq.is_file():
        rows = [{"qa_id": f"faq{i}", "messages": to_messages(r["question"], r["answer"])}
                for i, r in enumerate(read_jsonl(faq))]
    while len(rows) < n:
        d = rng.choice(list(TOPICS))
        v = {"t": rng.choice(TOPICS[d]), "r": rng.choice(ROLES), "d": d, "f": rng.choice(FORMS),
             "c": rng.choice(CITIES), "n": rng.choice([5, 10, 14, 30, 60, 90]),
             "m": rng.choice([25, 75, 145, 250, 1200])}
        v["r_cap"] = v["r"][0].upper() + v["r"][1:]
        q = rng.choice(QUESTIONS).format(**v)
        a = " ".join(rng.choice(ANSWERS).format(**v) for _ in range(rng.choice([1, 1, 1, 2])))
        rows.append({"qa_id": f"syn{len(rows)}", "messages": to_messages(q, a)})
    return rows[:n]


# ---------------------------------------------------------------------------------------------
# (a) the naive baseline
# ---------------------------------------------------------------------------------------------

def timed_trainer(log: list, seconds: float):
    """(Trainer subclass, callback): each batch appends its loss-bearing, non-pad and padded
    token counts to ``log`` and each step its end time; training stops once ``seconds`` have
    passed since the first step (at least 3 steps)."""
    from transformers import Trainer, TrainerCallback

    class Counting(Trainer):
        def compute_loss(self, model, inputs, *args, **kwargs):
            lab = inputs["labels"]
            # loss-bearing tokens of this batch (HF shifts labels by one inside the model)
            log.append({"useful": int((lab[:, 1:] != IGNORE).sum()),
                        "nonpad": int(inputs["attention_mask"].sum()), "padded": int(lab.numel())})
            return super().compute_loss(model, inputs, *args, **kwargs)

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            log[-1]["t"] = time.perf_counter()
            if len(log) >= 3 and log[-1]["t"] - log[0]["t"] >= seconds:
                control.should_training_stop = True

    return Counting, Clock


def run_naive(base_dir: str, examples: list, pad_id: int, seconds: float, max_length: int = 512,
              batch_size: int = 4) -> dict:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, TrainingArguments

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, local_files_only=True)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05,
                                             target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    data = []
    for e in examples:  # pad every example to max_length, as the study's example does
        n = len(e.input_ids)
        data.append({"input_ids": e.input_ids + [pad_id] * (max_length - n),
                     "attention_mask": [1] * n + [0] * (max_length - n),
                     "labels": e.labels + [IGNORE] * (max_length - n)})
    log: list = []
    Counting, Clock = timed_trainer(log, seconds)

    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, per_device_train_batch_size=batch_size, gradient_accumulation_steps=1,
            learning_rate=2e-4, num_train_epochs=100, max_steps=100_000, save_strategy="no",
            logging_strategy="no", eval_strategy="no", report_to=[], disable_tqdm=True,
            use_cpu=not torch.cuda.is_available(), bf16=False, fp16=False, seed=0,
            dataloader_num_workers=0, remove_unused_columns=False)
        Counting(model=model, args=args, train_dataset=data, callbacks=[Clock()]).train()
    timed = log[1:]  # the first step is warm-up
    dt = timed[-1]["t"] - log[0]["t"]
    return {"steps_timed": len(timed), "seconds": round(dt, 2), "batch_size": batch_size,
            "max_length": max_length, "dtype": "float32",
            "useful_tokens_per_s": round(sum(r["useful"] for r in timed) / dt, 2),
            "nonpad_tokens_per_s": round(sum(r["nonpad"] for r in timed) / dt, 2),
            "padded_tokens_per_s": round(len(timed) * batch_size * max_length / dt, 2)}


def run_tuned(base_dir: str, examples: list, pad_id: int, seconds: float, cfg: TrainConfig,
              dtype: torch.dtype) -> dict:
    """The strongest plain-HF baseline a user would write: ``Trainer`` with the train stage's
    dtype (bf16 weights and autocast where native), dynamic padding to the batch's longest row
    (``DataCollatorForSeq2Seq``: labels padded with -100, so loss only on assistant tokens),
    length-grouped batches (``train_sampling_strategy="group_by_length"``), and the same LoRA as
    ours (r, alpha, target modules, top ``layers`` only). Rows per batch: the train stage's
    token budget over the mean row length."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, TrainingArguments

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype, local_files_only=True)
    n_layers = model.config.num_hidden_layers
    lp = cfg.lora
    layers = list(range(n_layers - lp.layers, n_layers)) if lp.layers and lp.layers < n_layers else None
    model = get_peft_model(model, LoraConfig(r=lp.r, lora_alpha=lp.alpha, lora_dropout=lp.dropout,
                                             target_modules=sorted(lp.target_modules), layers_to_transform=layers,
                                             bias="none", task_type="CAUSAL_LM"))
    mean_len = sum(len(e.input_ids) for e in examples) / len(examples)
    batch_size = max(1, int(cfg.batch_tokens // mean_len))
    data = [{"input_ids": e.input_ids, "attention_mask": [1] * len(e.input_ids), "labels": e.labels}
            for e in examples]
    tok = AutoTokenizer.from_pretrained(base_dir, local_files_only=True)
    if tok.pad_token_id is None:
        tok.pad_token_id = pad_id
    log: list = []
    Counting, Clock = timed_trainer(log, seconds)

    bf16 = dtype == torch.bfloat16
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, per_device_train_batch_size=batch_size, gradient_accumulation_steps=1,
            learning_rate=cfg.learning_rate, num_train_epochs=100, max_steps=100_000, save_strategy="no",
            logging_strategy="no", eval_strategy="no", report_to=[], disable_tqdm=True,
            use_cpu=not torch.cuda.is_available(), bf16=bf16, fp16=False, seed=0,
            train_sampling_strategy="group_by_length", dataloader_num_workers=0, remove_unused_columns=False)
        Counting(model=model, args=args, train_dataset=data, callbacks=[Clock()],
                 data_collator=DataCollatorForSeq2Seq(tok, padding="longest", label_pad_token_id=IGNORE)).train()
    timed = log[1:]  # the first step is warm-up
    dt = timed[-1]["t"] - log[0]["t"]
    return {"steps_timed": len(timed), "seconds": round(dt, 2), "batch_size": batch_size,
            "dtype": str(dtype).removeprefix("torch."),
            "useful_tokens_per_s": round(sum(r["useful"] for r in timed) / dt, 2),
            "nonpad_tokens_per_s": round(sum(r["nonpad"] for r in timed) / dt, 2),
            "padded_tokens_per_s": round(sum(r["padded"] for r in timed) / dt, 2)}


# ---------------------------------------------------------------------------------------------
# (b) the train stage's loop
# ---------------------------------------------------------------------------------------------

def run_ours(base_dir: str, examples: list, pad_id: int, seconds: float, cfg: TrainConfig) -> dict:
    model = load_base_model(base_dir, cfg.dtype, torch.device("cpu"))
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    model = add_lora(model, cfg.lora, cfg.seed)
    if cfg.compile:
        compile_layers(model)
    cfg.epochs = 1000  # never run out of data inside the time window
    cfg.eval_every_steps = 10 ** 9
    cfg.early_stopping.patience = 0
    res = fit(model, examples, lambda: 0.0, cfg, Dist(), pad_id, time_limit_s=seconds)
    curve = res.state.curve_train
    first, last = curve[0], curve[-1]
    dt = last["train_time_s"] - first["train_time_s"]
    useful = last["tokens"] - first["tokens"]
    return {"steps_timed": len(curve) - 1, "seconds": round(dt, 2), "dtype": dtype,
            "batch_tokens": cfg.batch_tokens, "share_prefix": cfg.share_prefix, "compile": cfg.compile,
            "useful_tokens_per_s": round(useful / dt, 2),
            "tokens_run_per_s": round(res.state.tokens_run * (useful / max(1, last["tokens"])) / dt, 2),
            "padding_and_prefix_saving": round(1 - res.state.tokens_run / max(1, res.state.tokens_padded), 4)}


# ---------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", nargs="?", default="bench/out/train.json", help="JSON result path")
    ap.add_argument("--base", default="models/student", help="base model folder")
    ap.add_argument("--data", default="data/augment/train.jsonl", help="chat rows (else synthetic)")
    ap.add_argument("--rows", type=int, default=256, help="rows to train on")
    ap.add_argument("--seconds", type=float, default=75.0, help="timed training per run")
    ap.add_argument("--batch-tokens", type=int, default=None, help="override train.batch_tokens")
    ap.add_argument("--compile", action="store_true", help="torch.compile our decoder layers")
    ap.add_argument("--no-share-prefix", action="store_true")
    ap.add_argument("--skip-naive", action="store_true", help="skip the study's naive baseline")
    ap.add_argument("--skip-tuned", action="store_true", help="skip the tuned Trainer baseline")
    ap.add_argument("--max-length", type=int, default=None, help="rows longer are dropped "
                    "(default train.max_length; the naive baseline pads to 512 and drops longer rows itself)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    ap.add_argument("--peak-seconds", type=float, default=3.0, help="time per matmul peak measurement")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    result: dict = {"machine": {
        "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability()}, "load": {}}
    from policytune.lm.loading import bf16_supported
    result["machine"]["bf16_native"] = bf16_supported("cpu")
    result["load"]["start"] = load_state()

    cfg = TrainConfig()
    if args.batch_tokens:
        cfg.batch_tokens = args.batch_tokens
    cfg.compile, cfg.share_prefix = args.compile, not args.no_share_prefix
    tokenizer = load_tokenizer(args.base)
    if Path(args.data).is_file():
        rows, source = read_jsonl(args.data)[: args.rows], args.data
    else:
        rows, source = synthetic_rows(args.rows), "synthetic (sample FAQ + templated policy QA)"
    examples, _ = encode_rows(tokenizer, rows, args.max_length or cfg.max_length, "drop", "bench")
    lengths = [len(e.input_ids) for e in examples]
    result["data"] = {"source": source, "rows": len(examples),
                      "mean_tokens": round(sum(lengths) / len(lengths), 1),
                      "mean_assistant_tokens": round(sum(e.n_labels for e in examples) / len(examples), 1),
                      "mean_prompt_tokens": round(sum(e.prompt_len for e in examples) / len(examples), 1)}
    pad_id = tokenizer.pad_token_id or 0
    from transformers import AutoConfig

    print(f"peaks: measuring 2048^2 matmuls ({result['load']['start']})", flush=True)
    # emulated bf16 (no native support) runs a 2048^2 product in about a minute: 512^2 shows it
    bf16_n = 2048 if result["machine"]["bf16_native"] else 512
    ps = args.peak_seconds
    result["peak"] = {"float32": matmul_peak(torch.float32, seconds=ps),
                      "bfloat16": matmul_peak(torch.bfloat16, n=bf16_n, seconds=ps)}
    result["load"]["after_peak"] = load_state()

    if not args.skip_naive:
        short = [e for e in examples if len(e.input_ids) <= 512]
        print(f"naive baseline (HF Trainer, pad to 512, fp32; {len(short)} of {len(examples)} rows fit) ...", flush=True)
        result["naive"] = run_naive(args.base, short, pad_id, args.seconds) if short else {"skipped": "no row fits 512"}
        result["load"]["after_naive"] = load_state()
        print(f"  {result['naive']}", flush=True)
    from policytune.lm.loading import resolve_dtype
    saved = str(getattr(AutoConfig.from_pretrained(args.base), "dtype", None) or "float32").removeprefix("torch.")
    train_dtype_t = resolve_dtype(cfg.dtype, saved, "cpu")  # what the train stage loads the base in
    if not args.skip_tuned:
        print(f"tuned baseline (HF Trainer, {train_dtype_t}, dynamic padding, group_by_length, same LoRA) ...", flush=True)
        result["tuned"] = run_tuned(args.base, examples, pad_id, args.seconds, cfg, train_dtype_t)
        result["load"]["after_tuned"] = load_state()
        print(f"  {result['tuned']}", flush=True)
    print("train stage loop ...", flush=True)
    result["ours"] = run_ours(args.base, examples, pad_id, args.seconds, cfg)
    result["load"]["after_ours"] = load_state()
    print(f"  {result['ours']}", flush=True)
    # the peaks again: the machine may have got busier or quieter during the runs
    result["peak_end"] = {"float32": matmul_peak(torch.float32, seconds=ps),
                          "bfloat16": matmul_peak(torch.bfloat16, seconds=ps) if result["machine"]["bf16_native"]
                          else result["peak"]["bfloat16"]}  # emulated bf16 takes a minute a product
    result["load"]["end"] = load_state()

    from transformers import AutoModelForCausalLM
    with torch.device("meta"):
        n_params = sum(p.numel() for p in AutoModelForCausalLM.from_config(
            AutoConfig.from_pretrained(args.base)).parameters())
    result["base_params"] = n_params
    flops = 4 * n_params * result["ours"]["useful_tokens_per_s"]
    peaks = {k: max(result["peak"][k]["gflops"], result["peak_end"][k]["gflops"]) * 1e9
             for k in ("float32", "bfloat16")}
    train_dtype = result["ours"]["dtype"]
    result["mfu"] = {
        "vs_bf16_peak": round(flops / peaks["bfloat16"], 4),
        "vs_fp32_peak": round(flops / peaks["float32"], 4),
        f"vs_peak_of_training_dtype_{train_dtype}": round(flops / peaks.get(train_dtype, peaks["float32"]), 4),
        "vs_best_peak": round(flops / max(peaks.values()), 4),
    }
    real_per_useful = sum(lengths) / max(1, sum(e.n_labels for e in examples))
    result["ours"]["real_tokens_per_s"] = round(result["ours"]["useful_tokens_per_s"] * real_per_useful, 2)
    result["mfu"]["all_real_tokens_vs_best_peak"] = round(
        4 * n_params * result["ours"]["real_tokens_per_s"] / max(peaks.values()), 4)
    if "tuned" in result:
        t = result["tuned"]
        result["ratio_vs_tuned_useful_tokens_per_s"] = round(result["ours"]["useful_tokens_per_s"] / t["useful_tokens_per_s"], 2)
        result["mfu"]["tuned_all_real_tokens_vs_best_peak"] = round(4 * n_params * t["nonpad_tokens_per_s"] / max(peaks.values()), 4)
    if "useful_tokens_per_s" in result.get("naive", {}):
        result["ratio_useful_tokens_per_s"] = round(
            result["ours"]["useful_tokens_per_s"] / result["naive"]["useful_tokens_per_s"], 2)
        result["mfu"]["naive_vs_fp32_peak"] = round(
            4 * n_params * result["naive"]["useful_tokens_per_s"] / peaks["float32"], 4)
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result.get(k) for k in ("ratio_useful_tokens_per_s", "ratio_vs_tuned_useful_tokens_per_s",
                                                  "mfu", "peak", "load")}, indent=1))
    if "tuned" in result:
        print(f"assistant tok/s: tuned Trainer {result['tuned']['useful_tokens_per_s']}, ours "
              f"{result['ours']['useful_tokens_per_s']} -> {result['ratio_vs_tuned_useful_tokens_per_s']}x; real tok/s "
              f"{result['tuned']['nonpad_tokens_per_s']} vs {result['ours']['real_tokens_per_s']}; MFU on all real tokens "
              f"{result['mfu']['tuned_all_real_tokens_vs_best_peak']:.1%} vs {result['mfu']['all_real_tokens_vs_best_peak']:.1%}")
    if "ratio_useful_tokens_per_s" in result:
        print(f"useful tok/s: naive {result['naive']['useful_tokens_per_s']}, ours "
              f"{result['ours']['useful_tokens_per_s']} -> {result['ratio_useful_tokens_per_s']}x; "
              f"MFU {result['mfu']['vs_best_peak']:.1%} of the best matmul peak "
              f"({max(peaks.values()) / 1e9:.0f} GFLOP/s); load {result['load']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
