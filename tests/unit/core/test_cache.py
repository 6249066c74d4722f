"""JsonCache: one atomic JSON file per key; unreadable or foreign entries are misses, counted."""

from __future__ import annotations

import json

from policytune.core.cache import JsonCache


def test_round_trip_and_layout(tmp_path):
    c = JsonCache(tmp_path, fmt="indent1")
    c.put("abcdef", {"key": "abcdef", "b": 1, "a": "é"})
    p = tmp_path / "ab" / "abcdef.json"
    assert p.read_text(encoding="utf-8") == json.dumps({"a": "é", "b": 1, "key": "abcdef"},
                                                       ensure_ascii=False, indent=1, sort_keys=True) + "\n"
    assert c.get("abcdef") == {"key": "abcdef", "b": 1, "a": "é"}
    assert c.get("zz0000") is None and c.corrupt == 0


def test_pretty_format_is_records_write_json(tmp_path):
    from policytune.core.records import write_json

    JsonCache(tmp_path / "a").put("k1", {"y": [1, 2], "x": None})
    write_json(tmp_path / "b.json", {"y": [1, 2], "x": None})
    assert (tmp_path / "a" / "k1" / "k1.json").read_bytes() == (tmp_path / "b.json").read_bytes()


def test_corrupt_entry_is_a_counted_miss_and_reported(tmp_path):
    seen = []
    c = JsonCache(tmp_path, on_corrupt=seen.append)
    p = c.path("beef")
    p.parent.mkdir(parents=True)
    p.write_text("{not json")
    assert c.get("beef") is None and c.corrupt == 1 and seen == [p]


def test_check_key_rejects_an_entry_written_for_another_key(tmp_path):
    c = JsonCache(tmp_path, check_key=True)
    c.put("k1", {"key": "k2", "v": 1})
    c.put("k3", ["not", "a", "dict"])  # type: ignore[arg-type]
    assert c.get("k1") is None and c.get("k3") is None
    assert JsonCache(tmp_path).get("k1") == {"key": "k2", "v": 1}  # without the check it is served


# ------------------------------------------------------------------ shape validation (issue 17)


def _write(c: JsonCache, key: str, text: str) -> None:
    p = c.path(key)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text, encoding="utf-8")


def test_wrong_shape_entries_are_counted_misses(tmp_path):
    """Valid JSON of the wrong shape is corrupt: counted, reported, never served."""
    seen = []
    c = JsonCache(tmp_path, validate=lambda e: isinstance(e.get("score"), float), on_corrupt=seen.append)
    for key, text in [("k0", "[]"), ("k1", '{"failed": false}'), ("k2", '"a string"'), ("k3", "null"),
                      ("k4", '{"score": "high"}')]:
        _write(c, key, text)
        assert c.get(key) is None
    _write(c, "ok", '{"score": 0.5}')
    assert c.get("ok") == {"score": 0.5}
    assert c.corrupt == 5 == len(seen)
    assert c.corrupt_by_reason == {"not_an_object": 3, "invalid_shape": 2}


def test_a_validator_that_raises_marks_the_entry_corrupt(tmp_path):
    c = JsonCache(tmp_path, validate=lambda e: e["attempts"][0]["text"] != "")
    c.put("k", {"attempts": "x"})
    assert c.get("k") is None and c.corrupt_by_reason == {"invalid_shape": 1}


def test_per_call_validator_overrides_the_default(tmp_path):
    c = JsonCache(tmp_path, validate=lambda e: "score" in e)
    c.put("steps-1", {"steps": ["a"]})
    assert c.get("steps-1") is None
    assert c.get("steps-1", validate=lambda e: bool(e.get("steps"))) == {"steps": ["a"]}


def test_deeply_nested_or_huge_entries_are_corrupt_not_a_crash(tmp_path):
    c = JsonCache(tmp_path)
    _write(c, "deep", "[" * 100_000 + "]" * 100_000)   # RecursionError in json.load
    _write(c, "bigint", "[" + "9" * 5000 + "]")        # ValueError: int of more than 4300 digits
    _write(c, "bytes", "")
    c.path("bytes").write_bytes(b"\xff\xfe{")
    assert c.get("deep") is None and c.get("bigint") is None and c.get("bytes") is None
    assert c.corrupt == 3


def test_key_mismatch_is_counted(tmp_path):
    c = JsonCache(tmp_path, check_key=True)
    c.put("k1", {"key": "k2"})
    assert c.get("k1") is None and c.corrupt_by_reason == {"key_mismatch": 1}


def test_lone_surrogate_is_written_escaped_and_reads_back_identical(tmp_path):
    c = JsonCache(tmp_path, fmt="indent1")
    entry = {"key": "s1", "text": "bad \ud800 char", "ok": "é"}
    c.put("s1", entry)
    assert c.get("s1") == entry and c.corrupt == 0
    c.put("s2", {"ok": "é"})  # entries without one keep their byte layout (UTF-8, not escaped)
    assert "é" in c.path("s2").read_text(encoding="utf-8")
