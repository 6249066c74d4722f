"""A content-addressed JSON cache: one file per key, ``root/<key[:2]>/<key>.json``, written
atomically, so a killed run loses at most the entry in flight.

generate_qa keeps teacher replies in one, judge keeps judgements in another; both are DVC
``persist`` outs, so a rerun asks the model only for what changed. An entry that cannot be read
(or, with ``check_key``, that names another key) is a miss and is counted in ``corrupt``: it is
computed again, never trusted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional

from policytune.core.records import atomic_write_text, read_json


def _compact(entry: dict) -> str:
    return json.dumps(entry, ensure_ascii=False, indent=1, sort_keys=True) + "\n"


def _pretty(entry: dict) -> str:
    return json.dumps(entry, ensure_ascii=False, indent=2, sort_keys=True) + "\n"


FORMATS: dict[str, Callable[[dict], str]] = {"indent1": _compact, "indent2": _pretty}


class JsonCache:
    """``get(key)`` -> the stored dict or None; ``put(key, entry)`` stores it atomically.

    ``check_key``: entries carry their own ``"key"`` field, and one whose field differs from
    the file's key is a miss. ``fmt`` names the on-disk JSON layout (kept per cache so that
    existing caches stay byte-compatible). ``on_corrupt(path)`` is called for an unreadable entry.
    """

    def __init__(self, root: str | Path, *, check_key: bool = False, fmt: str = "indent2",
                 on_corrupt: Optional[Callable[[Path], None]] = None):
        self.root = Path(root)
        self.check_key = check_key
        self._dumps = FORMATS[fmt]
        self.on_corrupt = on_corrupt
        self.corrupt = 0

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> Optional[dict]:
        p = self.path(key)
        if not p.is_file():
            return None
        try:
            entry = read_json(p)
        except (OSError, ValueError):
            self.corrupt += 1  # a damaged entry is computed again, never trusted
            if self.on_corrupt is not None:
                self.on_corrupt(p)
            return None
        if self.check_key:
            return entry if isinstance(entry, dict) and entry.get("key") == key else None
        return entry

    def put(self, key: str, entry: dict) -> None:
        atomic_write_text(self.path(key), self._dumps(entry))
