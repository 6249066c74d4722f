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
