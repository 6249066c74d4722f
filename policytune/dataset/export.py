"""The QA data as a Hugging Face dataset folder: JSONL per split and a dataset card, written
and checked with the ``datasets`` library so that ``datasets.load_dataset(<folder>)`` reads it.

Three configs (the card's front matter lists them with their splits, features and counts):

- ``default``: ``train`` / ``validation`` / ``test`` as the ``split`` stage wrote them
  (data/split/{train,val,test}.jsonl); ``test`` is what ``evaluate`` scores;
- ``augmented``: ``train`` is data/augment/train.jsonl, the rows the adapter was trained on
  (the originals plus their augmented copies);
- ``qa``: ``train`` is data/qa.jsonl, every teacher pair that passed grounding, before the split.

Every row keeps its lineage fields (qa_id, chunk_id, doc_id, url, teacher, grounding,
augmentation, ...). Within a config all splits share one schema: the union of the rows' fields,
missing ones null. A split with no rows is left out (``load_dataset`` refuses an empty one) and
the card says so.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

import polars as pl

DATASET_NAME = "policytune-qa"


class ExportError(RuntimeError):
    """The written folder does not read back as the rows it was written from."""


@dataclass(frozen=True)
class ConfigSpec:
    name: str
    splits: tuple[tuple[str, str], ...]  # (split name in the dataset, source key)
    about: str


CONFIGS: tuple[ConfigSpec, ...] = (
    ConfigSpec("default", (("train", "train"), ("validation", "val"), ("test", "test")),
               "the leak-free splits of the `split` stage; `test` is what `evaluate` scores"),
    ConfigSpec("augmented", (("train", "augmented"),),
               "the rows the adapter was trained on: the train split plus its augmented copies"),
    ConfigSpec("qa", (("train", "qa"),),
               "every teacher-generated pair that passed grounding, before the split"),
)
SOURCES = ("qa", "train", "val", "test", "augmented")  # the source keys CONFIGS use

# What each lineage field means (the card lists every column; unknown ones as "as written upstream").
FIELDS = {
    "qa_id": "stable id of the pair: a hash of its source chunk and question (`ext-<hash>` for an external "
             "test row); an augmented copy has its own id",
    "question": "the question",
    "answer": "the reference answer",
    "chunk_id": "source chunk (data/chunks.jsonl): a hash of its document id and text",
    "doc_id": "source document (data/raw/manifest.jsonl)",
    "url": "the page the chunk was extracted from",
    "teacher": "who generated the pair: backend, model, model_sha (hash of the model's identity), prompt_sha "
               "(hash of the generation prompt and settings)",
    "grounding": "why the pair was kept: overlap (share of the answer's content words found in the chunk), "
                 "pair_cosine (encoder cosine of question + answer with the chunk)",
    "split": "the split the `split` stage assigned (train / val / test)",
    "messages": "the chat-format rendering (system, user, assistant) that training uses",
    "augmentation": "null for an original row; for an augmented copy: op, engine, seed, copy number, fields "
                    "changed and parent_qa_id (the row it was made from)",
    "external": "true for a test row from an external file (`split.external_test`), not generated",
    "source_page": "the page an external test row was written from (as given in that file)",
}


@dataclass
class ExportConfig:
    license: str = field(default="apache-2.0", metadata={
        "help": "license in the dataset card (the sample corpus is this project's, Apache-2.0; set your corpus's)"})
    pretty_name: str = field(default="policytune policy QA", metadata={"help": "title of the dataset card"})
    language: list[str] = field(default_factory=lambda: ["en"], metadata={"help": "languages of the questions"})


def _quiet():
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    return datasets


def config_rows(rows_by_source: Mapping[str, list[dict]], spec: ConfigSpec) -> dict[str, list[dict]]:
    """{split: rows} of one config, every row with the union of the config's fields (missing:
    None), fields in the order they first appear; empty splits left out."""
    picked = {split: rows_by_source.get(src) or [] for split, src in spec.splits}
    keys = list(dict.fromkeys(k for rows in picked.values() for r in rows for k in r))
    return {split: [{k: r.get(k) for k in keys} for r in rows] for split, rows in picked.items() if rows}


def build(rows_by_source: Mapping[str, list[dict]], configs: Sequence[ConfigSpec] = CONFIGS) -> dict:
    """{config: DatasetDict}: one schema per config, inferred by ``datasets`` from all its rows."""
    datasets = _quiet()
    out = {}
    for spec in configs:
        splits = config_rows(rows_by_source, spec)
        if not splits:
            continue
        features = datasets.Dataset.from_list([r for rows in splits.values() for r in rows]).features
        out[spec.name] = datasets.DatasetDict(
            {s: datasets.Dataset.from_list(rows, features=features) for s, rows in splits.items()})
    return out


def data_path(config: str, split: str) -> str:
    return f"data/{config}/{split}.jsonl"


def write(dsets: Mapping, out_dir: Path, card_text: str) -> None:
    """JSONL per (config, split) under ``out_dir/data`` and the card as ``out_dir/README.md``."""
    for config, dd in dsets.items():
        for split, ds in dd.items():
            path = out_dir / data_path(config, split)
            path.parent.mkdir(parents=True, exist_ok=True)
            ds.to_json(path, lines=True, force_ascii=False, double_precision=15)
    (out_dir / "README.md").write_text(card_text, encoding="utf-8")


def card_metadata(dsets: Mapping, cfg: ExportConfig):
    """The card's front matter (huggingface_hub DatasetCardData): configs with their data files
    (what ``load_dataset`` reads), and per config its features and split sizes."""
    datasets = _quiet()
    from datasets.info import DatasetInfosDict
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCardData

    n = sum(len(ds) for dd in dsets.values() for ds in dd.values())
    data = DatasetCardData(
        pretty_name=cfg.pretty_name, license=cfg.license, language=list(cfg.language),
        task_categories=["question-answering", "text-generation"],
        size_categories=["n<1K" if n < 1000 else "1K<n<10K" if n < 10_000 else "10K<n<100K" if n < 100_000
                         else "n>100K"],
        tags=["policytune", "synthetic", "policy-qa"])
    MetadataConfigs({c: {"data_files": [{"split": s, "path": data_path(c, s)} for s in dd],
                         **({"default": True} if c == "default" else {})}
                     for c, dd in dsets.items()}).to_dataset_card_data(data)
    infos = {}
    for c, dd in dsets.items():
        first = next(iter(dd.values()))
        infos[c] = datasets.DatasetInfo(
            features=first.features, config_name=c,
            splits=datasets.SplitDict({s: datasets.SplitInfo(s, num_examples=len(ds)) for s, ds in dd.items()}))
    DatasetInfosDict(infos).to_dataset_card_data(data)
    return data


def _table(headers: Sequence[str], rows: Sequence[Sequence]) -> list[str]:
    esc = lambda v: str(v).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers),
            *("| " + " | ".join(esc(v) for v in r) + " |" for r in rows)]


def count_table(dsets: Mapping, label: Callable[[dict], Optional[str]], column: str) -> pl.DataFrame:
    """Rows per ``label(row)`` and config (rows labelled None are not counted): one polars
    group-by of the (config, label) pairs, pivoted to a column per config, sorted by label."""
    config, labels = [], []
    for c, dd in dsets.items():
        for ds in dd.values():
            for r in ds:
                v = label(r)
                if v is not None:
                    config.append(c)
                    labels.append(v)
    if not labels:
        return pl.DataFrame({column: []}, schema={column: pl.String})
    long = pl.DataFrame({"config": config, column: labels}, schema={"config": pl.String, column: pl.String})
    wide = long.group_by("config", column).len().pivot(on="config", index=column, values="len",
                                                        on_columns=list(dsets))
    return wide.fill_null(0).sort(column)


def source_of(row: dict) -> str:
    """A row's source page: its ``url``, or the ``source_page`` an external test row names."""
    if row.get("url"):
        return str(row["url"])
    return f"external: {row['source_page']}" if row.get("source_page") else "(none)"


def teacher_of(row: dict) -> Optional[str]:
    t = row.get("teacher")
    return " / ".join(str(t.get(k) or "") for k in ("backend", "model", "model_sha", "prompt_sha")) if t else None


def augmentation_of(row: dict) -> str:
    a = row.get("augmentation")
    return str(a.get("op") or "?") if a else "(original)"


def dataset_card(dsets: Mapping, inputs: Mapping[str, dict], cfg: ExportConfig, name: str = DATASET_NAME,
                 empty: Sequence[str] = (), folder: Optional[str] = None) -> str:
    """README.md of the folder: front matter, how to load it, counts per split, sources,
    teachers, augmentation and the lineage fields."""
    front = card_metadata(dsets, cfg).to_yaml()
    about = {s.name: s for s in CONFIGS}
    lines = [f"# {cfg.pretty_name} (`{name}`)", "",
             "Question-answer pairs about an organisation's policies: a teacher model wrote them from the policy "
             "pages (`generate_qa`, grounded in the source chunk), the `split` stage split them leak-free by source "
             "chunk, and `augment` added perturbed copies of the train rows. Written by the `export_dataset` stage "
             "of policytune from the files listed below.", "",
             "```python", "from datasets import load_dataset",
             f'ds = load_dataset("./{folder or name}")  # a local folder; config default: train / validation / test']
    lines += [f'{c} = load_dataset("./{folder or name}", "{c}")' for c in dsets if c != "default"]
    lines += ["```", "", "## Configs and splits", ""]
    rows = []
    for c, dd in dsets.items():
        spec = about.get(c)
        src = dict(spec.splits) if spec else {}
        for s, ds in dd.items():
            inp = inputs.get(src.get(s), {})
            rows.append([c, s, len(ds), f"`{inp.get('path', '?')}`", f"`{str(inp.get('sha256', ''))[:16]}`",
                         spec.about if spec else ""])
    lines += _table(["Config", "Split", "Rows", "Source file", "sha256", "What"], rows)
    if empty:
        lines += ["", "Empty, so left out (`load_dataset` refuses an empty split): " + ", ".join(empty) + "."]

    lines += ["", "## Sources", "",
              "Rows per source page (`url`; an external test row names its `source_page`) and config:", ""]
    st = count_table(dsets, source_of, "source")
    lines += _table(st.columns, st.rows()) if st.height else ["(no rows)"]
    tt = count_table(dsets, teacher_of, "teacher: backend / model / model_sha / prompt_sha")
    if tt.height:
        lines += ["", "## Teachers", "", "Rows per teacher and config:", ""]
        lines += _table(tt.columns, tt.rows())
    if "augmented" in dsets:
        at = count_table({"augmented": dsets["augmented"]}, augmentation_of, "augmentation op")
        lines += ["", "## Augmentation", "", "Rows of `augmented/train` per augmentation op:", ""]
        lines += _table(at.columns, at.rows())

    lines += ["", "## Fields", "", "Every row keeps its lineage; a field a row does not have is null.", ""]
    cols = list(dict.fromkeys(k for dd in dsets.values() for ds in dd.values() for k in ds.column_names))
    lines += _table(["Field", "Configs", "Meaning"],
                    [[f"`{k}`", ", ".join(c for c, dd in dsets.items() if k in next(iter(dd.values())).column_names),
                      FIELDS.get(k, "as written upstream")] for k in cols])
    return f"---\n{front}\n---\n" + "\n".join(lines) + "\n"


def verify(out_dir: Path, dsets: Mapping) -> dict[str, dict[str, int]]:
    """Read the folder back with ``datasets.load_dataset`` (a throw-away cache) and check every
    config's splits, row counts, columns and qa_ids; returns {config: {split: rows}}."""
    datasets = _quiet()
    seen: dict[str, dict[str, int]] = {}
    with tempfile.TemporaryDirectory(prefix="policytune-dataset-check-") as cache:
        for c, dd in dsets.items():
            try:
                got = datasets.load_dataset(str(out_dir), c, cache_dir=cache)
            except Exception as e:  # the card's split sizes, the files' JSON, ...: datasets' own checks
                raise ExportError(f"{out_dir} config {c}: load_dataset fails: {type(e).__name__}: {e}") from e
            if set(got) != set(dd):
                raise ExportError(f"{out_dir} config {c}: load_dataset gives splits {sorted(got)}, wrote {sorted(dd)}")
            for s, ds in dd.items():
                if got[s].column_names != ds.column_names or len(got[s]) != len(ds):
                    raise ExportError(f"{out_dir} {c}/{s}: read back {len(got[s])} rows {got[s].column_names}, "
                                      f"wrote {len(ds)} rows {ds.column_names}")
                if "qa_id" in ds.column_names and got[s]["qa_id"] != ds["qa_id"]:
                    raise ExportError(f"{out_dir} {c}/{s}: qa_ids read back differ from those written")
            seen[c] = {s: len(got[s]) for s in got}
    return seen


def export(rows_by_source: Mapping[str, list[dict]], inputs: Mapping[str, dict], out_dir: Path,
           cfg: Optional[ExportConfig] = None, folder: Optional[str] = None) -> dict:
    """Build, write and verify the dataset folder ``out_dir`` (which must not exist yet: the
    stage writes into a temp dir and renames it to ``folder``, the path the card names and whose
    last part is the dataset's name). Returns {config: {split: rows}}."""
    cfg = cfg or ExportConfig()
    dsets = build(rows_by_source)
    if not dsets:
        raise ExportError("no rows to export: every source file is empty")
    empty = [f"{spec.name}/{split}" for spec in CONFIGS for split, src in spec.splits
             if not rows_by_source.get(src)]
    folder = folder or str(out_dir)
    write(dsets, out_dir, dataset_card(dsets, inputs, cfg, Path(folder).name, empty, folder))
    return verify(out_dir, dsets)
