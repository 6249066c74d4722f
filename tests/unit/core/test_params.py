"""params validation: every value of every section is checked against its annotation (strict:
no str -> number coercion), errors name the full key and what it must be, unknown keys name
the valid ones."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal, Optional

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from policytune.core.params import (Fraction, ParamsError, PositiveInt, Range, describe_type, field_hints, from_dict,
                                    load_section, read_params, section_class)
from policytune.tools.params_cli import SECTIONS, section_config

REPO = Path(__file__).resolve().parents[3]

# The sections whose annotations this project declares in full (element types, choices, ranges).
TYPED = ("models", "prepare", "scrape", "render", "extract", "generate_qa", "split", "augment", "train", "evaluate", "judge", "report")


def write(tmp_path: Path, data: dict) -> Path:
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def leaves(cls: type, prefix: str):
    """(dotted key, owning dataclass, field name, annotation) of every non-section field."""
    hints = field_hints(cls)
    for f in dataclasses.fields(cls):
        sub = section_class(hints[f.name])
        if sub is not None:
            yield from leaves(sub, f"{prefix}.{f.name}")
        else:
            yield f"{prefix}.{f.name}", cls, f.name, hints[f.name]


ALL_LEAVES = [(s, *leaf) for s in TYPED for leaf in leaves(section_config(s), s)]


# --------------------------------------------------------------------------- the cases

def test_a_word_for_an_optional_float_fails_naming_the_key(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("split:\n  near_dup_threshold: zero point nine\n")
    from policytune.dataset.split import SplitConfig

    with pytest.raises(ParamsError) as e:
        load_section(SplitConfig, "split", p)
    msg = str(e.value)
    assert "'split.near_dup_threshold'" in msg and "a number" in msg and "or null" in msg
    assert "'zero point nine'" in msg


def test_ints_pass_for_floats_and_are_stored_as_floats_null_for_optional(tmp_path):
    from policytune.dataset.split import SplitConfig

    cfg = load_section(SplitConfig, "split", write(tmp_path, {"split": {"train": 1, "val": 0, "test": 0,
                                                                       "near_dup_threshold": None}}))
    assert cfg.train == 1.0 and isinstance(cfg.train, float) and cfg.near_dup_threshold is None


@pytest.mark.parametrize("section,values,key", [
    ("split", {"near_dup_threshold": "0.9"}, "split.near_dup_threshold"),   # a quoted number is text
    ("split", {"seed": "42"}, "split.seed"),
    ("split", {"seed": 4.0}, "split.seed"),                                  # no float -> int either
    ("split", {"seed": True}, "split.seed"),                                 # a bool is not an int
    ("train", {"merge": 1}, "train.merge"),                                  # an int is not a bool
    ("train", {"merge": "yes please"}, "train.merge"),
    ("train", {"learning_rate": "2e-4"}, "train.learning_rate"),             # PyYAML reads 2e-4 as text
    ("train", {"base_dir": 5}, "train.base_dir"),                            # no int -> str
    ("scrape", {"sources": "data/sample_site"}, "scrape.sources"),          # a list, not a string
])
def test_no_silent_coercion(tmp_path, section, values, key):
    with pytest.raises(ParamsError, match=f"'{key}'"):
        load_section(section_config(section), section, write(tmp_path, {section: values}))


def test_exponent_without_a_point_gets_a_how_to(tmp_path):
    with pytest.raises(ParamsError, match=r"write 2\.0e-4"):
        load_section(section_config("train"), "train", write(tmp_path, {"train": {"learning_rate": "2e-4"}}))


@pytest.mark.parametrize("section,values,key,allowed", [
    ("split", {"group_by": "page"}, "split.group_by", "'chunk', 'doc'"),
    ("train", {"lr_scheduler": "step"}, "train.lr_scheduler", "'linear', 'cosine', 'constant'"),
    ("train", {"overlong": "truncate"}, "train.overlong", "'error', 'drop'"),
    ("train", {"dtype": "fp8"}, "train.dtype", "'auto', 'bfloat16', 'float32', 'float16'"),
    ("evaluate", {"batching": "dynamic"}, "evaluate.batching", "'continuous', 'static'"),
    ("prepare", {"dtype": "auto"}, "prepare.dtype", "'float32', 'bfloat16', 'float16'"),
    ("augment", {"back_translation": {"engine": "deepl"}}, "augment.back_translation.engine",
     "'apertium', 'google', 'teacher'"),
    ("augment", {"back_translation": {"teacher": {"quantize": "int4"}}}, "augment.back_translation.teacher.quantize",
     "'none', 'int8', 'auto'"),
    ("report", {"example_metric": "bertscore"}, "report.example_metric", "'bertscore_f1'"),
])
def test_choices_name_the_key_and_the_allowed_values(tmp_path, section, values, key, allowed):
    with pytest.raises(ParamsError) as e:
        load_section(section_config(section), section, write(tmp_path, {section: values}))
    assert f"'{key}'" in str(e.value) and "one of" in str(e.value) and allowed in str(e.value)


@pytest.mark.parametrize("section,values,where,must", [
    ("split", {"train": 1.5}, "'split.train'", "in [0, 1]"),
    ("scrape", {"min_ok_fraction": -0.1}, "'scrape.min_ok_fraction'", "in [0, 1]"),
    ("train", {"epochs": 0}, "'train.epochs'", ">= 1"),
    ("train", {"warmup_ratio": 1.0}, "'train.warmup_ratio'", "in [0, 1)"),
    ("train", {"lora": {"dropout": 1}}, "'train.lora.dropout'", "in [0, 1)"),
    ("evaluate", {"top_p": 0}, "'evaluate.top_p'", "in (0, 1]"),
    ("evaluate", {"rag": {"top_k": 0}}, "'evaluate.rag.top_k'", ">= 1"),
    ("augment", {"char": {"word_p": 2}}, "'augment.char.word_p'", "in [0, 1]"),
    ("augment", {"copies": -1}, "'augment.copies'", ">= 0"),
    ("extract", {"max_tokens": 4}, "'extract.max_tokens'", ">= 8"),
])
def test_ranges(tmp_path, section, values, where, must):
    with pytest.raises(ParamsError) as e:
        load_section(section_config(section), section, write(tmp_path, {section: values}))
    assert where in str(e.value) and must in str(e.value)


def test_element_types_of_lists_and_mappings(tmp_path):
    def err(section, values):
        with pytest.raises(ParamsError) as e:
            load_section(section_config(section), section, write(tmp_path, {section: values}))
        return str(e.value)

    assert "'train.lora.target_modules[1]' must be a string, got 3" in err("train", {"lora": {"target_modules":
                                                                                            ["q_proj", 3]}})
    m = err("augment", {"weights": {"synonyms": 1.0}})
    assert "'augment.weights' key 'synonyms'" in m and "'synonym'" in m
    assert "'augment.weights.char_swap' must be a number >= 0" in err("augment", {"weights": {"char_swap": -1}})
    assert "'render.fonts' key 'regularr'" in err("render", {"fonts": {"regularr": "/x.ttf"}})
    assert "'render.fonts.bold' must be a string" in err("render", {"fonts": {"bold": 1}})


def test_unknown_keys_name_the_valid_ones_at_every_depth(tmp_path):
    with pytest.raises(ParamsError, match=r"unknown key\(s\) in params 'split': group; valid keys: .*group_by"):
        load_section(section_config("split"), "split", write(tmp_path, {"split": {"group": "doc"}}))
    with pytest.raises(ParamsError, match=r"unknown key\(s\) in params 'train.lora': rank; valid keys: alpha, "
                                          r"dropout, layers, r, target_modules"):
        load_section(section_config("train"), "train", write(tmp_path, {"train": {"lora": {"rank": 4}}}))
    with pytest.raises(ParamsError, match=r"params 'train.lora' must be a mapping"):
        load_section(section_config("train"), "train", write(tmp_path, {"train": {"lora": 4}}))


def test_post_init_checks_still_run(tmp_path):
    with pytest.raises(ParamsError, match="overlap_tokens"):
        load_section(section_config("extract"), "extract",
                     write(tmp_path, {"extract": {"max_tokens": 40, "overlap_tokens": 30}}))


def test_bad_yaml_is_a_params_error(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("split: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        read_params(p)


# --------------------------------------------------------------------------- the repository's params

def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def test_the_default_params_and_the_tests_overrides_validate(tmp_path):
    from tests.conftest import TINY

    data = read_params(REPO / "params.yaml")
    assert set(data) <= set(SECTIONS)
    for params in (data, deep_merge(data, TINY)):
        p = write(tmp_path, params)
        for section in SECTIONS:
            load_section(section_config(section), section, p)


def test_every_typed_field_declares_its_element_types():
    """No bare ``list``/``dict``: the items of every list and mapping are checked too."""
    bare = [key for _, key, _, _, hint in ALL_LEAVES
            for h in [typing.get_origin(hint) or hint] if h in (list, dict) and not typing.get_args(hint)]
    assert not bare


def test_report_example_metric_choices_are_the_evaluate_metrics():
    from policytune.evaluation.config import METRICS
    from policytune.report.build import ReportConfig

    assert typing.get_args(field_hints(ReportConfig)["example_metric"]) == METRICS


# --------------------------------------------------------------------------- properties over every field

def _accepts_text(hint) -> bool:
    while typing.get_origin(hint) is Annotated:
        hint = typing.get_args(hint)[0]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_accepts_text(a) for a in typing.get_args(hint))
    return hint in (str, typing.Any, object)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), text=st.text(max_size=12))
def test_text_is_rejected_wherever_text_is_not_allowed(data, text):
    section, key, cls, name, hint = data.draw(st.sampled_from([x for x in ALL_LEAVES if not _accepts_text(x[4])]))
    choices = typing.get_args(hint) if typing.get_origin(hint) is Literal else ()
    if text in choices:
        return
    values: dict = {}
    d = values
    for part in key.split(".")[1:-1]:
        d = d.setdefault(part, {})
    d[name] = text
    with pytest.raises(ParamsError) as e:
        from_dict(section_config(section), values, section)
    assert f"'{key}" in str(e.value)


@settings(max_examples=80, deadline=None)
@given(x=st.floats(allow_nan=False, allow_infinity=False, min_value=-10, max_value=10))
def test_fraction_fields_accept_exactly_zero_to_one(x):
    from policytune.dataset.split import SplitConfig

    ok = 0 <= x <= 1
    try:
        from_dict(SplitConfig, {"val": x}, "split")
        assert ok
    except ParamsError as e:
        assert not ok and "'split.val' must be a number in [0, 1]" in str(e)


# --------------------------------------------------------------------------- the mechanism itself

@dataclass
class Inner:
    n: PositiveInt = field(default=1, metadata={"help": "count"})


@dataclass
class Demo:
    mode: Literal["a", "b"] = "a"
    rate: Fraction = 0.5
    names: list[str] = field(default_factory=list)
    table: dict[str, float] = field(default_factory=dict)
    maybe: Optional[Annotated[int, Range(ge=0, le=9)]] = None
    inner: Inner = field(default_factory=Inner)
    opt_inner: Optional[Inner] = None


def test_describe_type():
    h = field_hints(Demo)
    assert describe_type(h["mode"]) == "one of 'a', 'b'"
    assert describe_type(h["rate"]) == "a number in [0, 1]"
    assert describe_type(h["names"]) == "a list (each item a string)"
    assert describe_type(h["table"]) == "a mapping (keys: a string; values: a number)"
    assert describe_type(h["maybe"]) == "an integer in [0, 9] or null"
    assert describe_type(h["inner"]) == "a mapping with keys n"


def test_nested_and_optional_sections():
    d = from_dict(Demo, {"inner": {"n": 3}, "opt_inner": {"n": 2}, "maybe": 9, "table": {"x": 1}}, "demo")
    assert d.inner == Inner(3) and d.opt_inner == Inner(2) and d.maybe == 9 and d.table == {"x": 1.0}
    assert from_dict(Demo, {"opt_inner": None, "inner": None}, "demo").opt_inner is None
    with pytest.raises(ParamsError, match=r"'demo.opt_inner.n' must be an integer >= 1, got 0"):
        from_dict(Demo, {"opt_inner": {"n": 0}}, "demo")
    with pytest.raises(ParamsError, match=r"'demo.maybe' must be an integer in \[0, 9\] or null, got 10"):
        from_dict(Demo, {"maybe": 10}, "demo")
