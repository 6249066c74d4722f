"""The QA data as a dataset folder: `datasets.load_dataset(<folder>)` reads every config and split
back (offline, a throw-away cache), the rows and their lineage fields survive, and the card's front
matter and text name the configs, splits, counts, sources and fields."""

from __future__ import annotations

import json
import re

import datasets
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policytune.dataset.export import (CONFIGS, FIELDS, ExportConfig, ExportError, build, config_rows, export,
                                       verify)

SYSTEM = {"role": "system", "content": "You are a policy assistant."}


def qa_row(i: int, page: str = "hr/leave.html") -> dict:
    return {"qa_id": f"q{i:03d}", "question": f"Question {i}?", "answer": f"Answer {i}.", "chunk_id": f"c{i % 4}",
            "doc_id": f"d{i % 2}", "url": f"https://policies.example.invalid/{page}",
            "teacher": {"backend": "openai", "model": "teacher-x", "model_sha": "ab12", "prompt_sha": "cd34"},
            "grounding": {"overlap": 0.875, "pair_cosine": 0.61234}}


def in_split(row: dict, split: str) -> dict:
    return {**row, "split": split, "messages": [SYSTEM, {"role": "user", "content": row["question"]},
                                                {"role": "assistant", "content": row["answer"]}]}


def sources(n_qa: int = 12, n_val: int = 3, n_ext: int = 4) -> dict:
    qa = [qa_row(i, "hr/leave.html" if i % 3 else "finance/travel.html") for i in range(n_qa)]
    train = [in_split(r, "train") for r in qa[n_val:]]
    val = [in_split(r, "val") for r in qa[:n_val]]
    test = [{"question": f"External {i}?", "answer": f"Ext answer {i}.", "source_page": "hr/leave.html",
             "qa_id": f"ext-{i}", "external": True, "split": "test"} for i in range(n_ext)]
    aug = [{**r, "augmentation": None} for r in train]
    aug += [{**r, "qa_id": r["qa_id"] + "-a", "question": r["question"].lower(),
             "augmentation": {"op": "char_swap", "seed": 7, "parent_qa_id": r["qa_id"], "engine": None,
                              "copy": 0, "fields": ["question"]}} for r in train[:2]]
    return {"qa": qa, "train": train, "val": val, "test": test, "augmented": aug}


def inputs_of(rows: dict) -> dict:
    return {k: {"path": f"data/{k}.jsonl", "sha256": "0" * 64, "rows": len(v)} for k, v in rows.items()}


def load(folder, config, tmp_path):
    return datasets.load_dataset(str(folder), config, cache_dir=str(tmp_path / "hf-cache"))


def front_matter(text: str) -> dict:
    m = re.match(r"^---\n(.*?)\n---\n", text, re.S)
    assert m, "card has no YAML front matter"
    return yaml.safe_load(m.group(1))


def test_folder_loads_with_load_dataset_and_keeps_every_row(tmp_path):
    rows = sources()
    out = tmp_path / "policytune-qa"
    counts = export(rows, inputs_of(rows), out, folder="data/policytune-qa")
    assert counts == {"default": {"train": 9, "validation": 3, "test": 4}, "augmented": {"train": 11},
                      "qa": {"train": 12}}

    ds = load(out, None, tmp_path)  # no config named: the default one
    assert set(ds) == {"train", "validation", "test"}
    assert ds["train"]["qa_id"] == [r["qa_id"] for r in rows["train"]]
    assert ds["test"].features == ds["train"].features  # one schema per config
    ext = ds["test"][0]
    assert ext["external"] is True and ext["chunk_id"] is None and ext["teacher"] is None
    assert ext["source_page"] == "hr/leave.html"
    first = ds["train"][0]
    assert first["teacher"] == rows["train"][0]["teacher"] and first["grounding"]["pair_cosine"] == 0.61234
    assert first["messages"][-1] == {"role": "assistant", "content": rows["train"][0]["answer"]}

    aug = load(out, "augmented", tmp_path)["train"]
    assert len(aug) == 11 and aug["augmentation"][0] is None
    assert aug[-1]["augmentation"]["parent_qa_id"] == rows["train"][1]["qa_id"]
    assert load(out, "qa", tmp_path)["train"]["qa_id"] == [r["qa_id"] for r in rows["qa"]]
    # plain JSONL per split, one row a line
    lines = (out / "data/default/test.jsonl").read_text().splitlines()
    assert len(lines) == 4 and json.loads(lines[0])["qa_id"] == "ext-0"


def test_card_front_matter_lists_configs_splits_and_counts(tmp_path):
    rows = sources()
    out = tmp_path / "policytune-qa"
    export(rows, inputs_of(rows), out, ExportConfig(license="cc-by-4.0"), folder="data/policytune-qa")
    text = (out / "README.md").read_text()
    meta = front_matter(text)
    assert meta["license"] == "cc-by-4.0" and meta["language"] == ["en"]
    configs = {c["config_name"]: c for c in meta["configs"]}
    assert set(configs) == {"default", "augmented", "qa"} and configs["default"].get("default") is True
    assert [f["split"] for f in configs["default"]["data_files"]] == ["train", "validation", "test"]
    assert all((out / f["path"]).is_file() for c in configs.values() for f in c["data_files"])
    infos = {i["config_name"]: i for i in meta["dataset_info"]}
    assert {s["name"]: s["num_examples"] for s in infos["default"]["splits"]} == {"train": 9, "validation": 3,
                                                                                   "test": 4}
    assert {f["name"] for f in infos["augmented"]["features"]} >= {"qa_id", "chunk_id", "doc_id", "url", "teacher",
                                                                   "augmentation"}
    # text: how to load, counts per split with their source files, sources, teachers, lineage fields
    assert 'load_dataset("./data/policytune-qa")' in text
    assert "| default | validation | 3 | `data/val.jsonl` |" in text
    assert "| https://policies.example.invalid/hr/leave.html | 8 | 7 | 8 |" in text
    assert "| https://policies.example.invalid/finance/travel.html | 4 | 4 | 4 |" in text
    assert "| external: hr/leave.html | 4 | 0 | 0 |" in text
    assert "| openai / teacher-x / ab12 / cd34 | 12 | 11 | 12 |" in text
    assert "| char_swap | 2 |" in text and "| (original) | 9 |" in text
    for field in ("qa_id", "chunk_id", "doc_id", "url", "teacher", "grounding", "augmentation", "external"):
        assert f"| `{field}` |" in text and FIELDS[field] in text


def test_an_empty_split_is_left_out_and_named(tmp_path):
    rows = sources(n_val=0)
    out = tmp_path / "ds"
    counts = export(rows, inputs_of(rows), out)
    assert counts["default"] == {"train": 12, "test": 4}
    assert "Empty, so left out" in (out / "README.md").read_text() and "default/validation" in (
        out / "README.md").read_text()
    assert set(load(out, "default", tmp_path)) == {"train", "test"}


def test_verify_fails_when_the_folder_does_not_read_back_as_written(tmp_path):
    rows = sources()
    out = tmp_path / "ds"
    export(rows, inputs_of(rows), out)
    dsets = build(rows)
    path = out / "data/qa/train.jsonl"
    text = path.read_text()
    path.write_text(text.replace('"q000"', '"q999"'))  # same count, another row
    with pytest.raises(ExportError, match="qa/train: qa_ids read back differ"):
        verify(out, dsets)
    path.write_text("".join(text.splitlines(keepends=True)[:-1]))  # one row lost: the card's count is wrong
    with pytest.raises(ExportError, match="config qa: load_dataset fails: NonMatchingSplitsSizesError"):
        verify(out, dsets)


def test_nothing_to_export_is_an_error(tmp_path):
    with pytest.raises(ExportError, match="no rows to export"):
        export({k: [] for k in ("qa", "train", "val", "test", "augmented")}, {}, tmp_path / "ds")


def test_configs_cover_every_source_once():
    used = [src for spec in CONFIGS for _, src in spec.splits]
    assert sorted(used) == sorted(["qa", "train", "val", "test", "augmented"])


optional = st.one_of(st.none(), st.text(min_size=1, max_size=8))


@st.composite
def split_rows(draw):
    """Rows whose optional fields come and go between rows and splits."""
    out = {}
    n = 0
    for src in ("train", "val", "test"):
        rows = []
        for _ in range(draw(st.integers(0, 4))):
            r = {"qa_id": f"r{n}", "question": draw(st.text(max_size=20)), "answer": draw(st.text(max_size=20))}
            n += 1
            for k in ("chunk_id", "url", "source_page"):
                v = draw(optional)
                if v is not None or draw(st.booleans()):
                    r[k] = v
            rows.append(r)
        out[src] = rows
    return out


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=split_rows())
def test_any_mix_of_fields_reads_back_exactly(rows, tmp_path_factory):
    spec = CONFIGS[0]
    expect = config_rows(rows, spec)
    if not expect:
        assert build(rows, [spec]) == {}
        return
    tmp = tmp_path_factory.mktemp("prop")
    out = tmp / "ds"
    export({**rows, "qa": [], "augmented": []}, {}, out)
    got = load(out, "default", tmp)
    assert set(got) == set(expect)
    for split, want in expect.items():
        assert got[split].to_list() == want
