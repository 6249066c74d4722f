"""A content-addressed JSON cache: one file per key, ``root/<key[:2]>/<key>.json``, written
atomically, so a killed run loses at most the entry in flight.

generate_qa keeps teacher replies in one, judge keeps judgements in another; both are DVC
``persist`` outs, so a rerun asks the model only for what changed. An entry that cannot be read,
is not a JSON object, (with ``check_key``) names another key, or fails the cache's ``validate``
check (valid JSON of the wrong shape: ``[]``, missing keys, wrong types) is a miss and is counted
in ``corrupt``: it is computed again, never trusted.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Optional

from policytune.core.records import atomic_write_text, read_json


def _compact(entry: dict) -> str:
    return json.dumps(entry, ensure_ascii=False, indent=1, sort_keys=True) + "\n"


def _pretty(entry: dict) -> str:
    return json.dumps(entry, ensure_ascii=False, indent=2, sort_keys=True) + "\n"


FORMATS: dict[str, Callable[[dict], str]] = {"indent1": _compact, "indent2": _pretty}

Validator = Callable[[dict], bool]


class JsonCache:
    """``get(key)`` -> the stored dict or None; ``put(key, entry)`` stores it atomically.

    ``check_key``: entries carry their own ``"key"`` field, and one whose field differs from
    the file's key is a miss. ``validate(entry) -> bool``: the shape check of a readable entry
    (a False, or an exception raised by the check, makes it a miss); ``get(key, validate=...)``
    overrides it for one lookup (one cache holding two kinds of entry). ``fmt`` names the
    on-disk JSON layout (kept per cache so that existing caches stay byte-compatible).
    ``on_corrupt(path)`` is called for every corrupt entry; ``corrupt`` counts them and
    ``corrupt_by_reason`` says why (unreadable | not_an_object | key_mismatch | invalid_shape).
    """

    def __init__(self, root: str | Path, *, check_key: bool = False, fmt: str = "indent2",
                 on_corrupt: Optional[Callable[[Path], None]] = None, validate: Optional[Validator] = None):
        self.root = Path(root)
        self.check_key = check_key
        self._dumps = FORMATS[fmt]
        self._indent = {"indent1": 1, "indent2": 2}[fmt]
        self.on_corrupt = on_corrupt
        self.validate = validate
        self.corrupt = 0
        self.corrupt_by_reason: Counter = Counter()

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def _bad(self, p: Path, reason: str) -> None:
        self.corrupt += 1  # a damaged entry is computed again, never trusted
        self.corrupt_by_reason[reason] += 1
        if self.on_corrupt is not None:
            self.on_corrupt(p)

    def get(self, key: str, validate: Optional[Validator] = None) -> Optional[dict]:
        p = self.path(key)
        if not p.is_file():
            return None
        try:
            entry: Any = read_json(p)
        except (OSError, ValueError, RecursionError):  # RecursionError: JSON nested too deeply
            self._bad(p, "unreadable")
            return None
        if not isinstance(entry, dict):
            self._bad(p, "not_an_object")
            return None
        if self.check_key and entry.get("key") != key:
            self._bad(p, "key_mismatch")
            return None
        check = validate or self.validate
        if check is not None:
            try:
                ok = bool(check(entry))
            except Exception:  # a check that trips over a strange entry has found a bad entry
                ok = False
            if not ok:
                self._bad(p, "invalid_shape")
                return None
        return entry

    def put(self, key: str, entry: dict) -> None:
        text = self._dumps(entry)
        try:
            atomic_write_text(self.path(key), text)
        except UnicodeEncodeError:
            # A lone surrogate (a model reply can carry one) has no UTF-8 form; written as a
            # \udXXX escape the entry reads back identical. Other entries keep their bytes.
            atomic_write_text(self.path(key), json.dumps(entry, ensure_ascii=True, indent=self._indent,
                                                         sort_keys=True) + "\n")
