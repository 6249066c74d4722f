"""Local sources of the scraper: HTML files and folders (a saved copy of a site, whose
robots.txt at the root is honoured, parsed by ``protego`` per RFC 9309), read into the same
manifest rows as fetched pages.

Symlinks may not leave their source: a file below a folder source (or a file source) whose
resolved path is outside the resolved source folder (the folder named, or the folder a named
file is in) is never opened; it becomes a row with status ``symlink_outside_source`` and an
error naming the link (not its target). A symlinked folder below a folder source is not
descended into (the files it links are either inside the folder anyway or outside it); one
that points outside is reported the same way. Links that stay inside are read as usual.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from protego import Protego

from policytune.core import records
from policytune.core.progress import get_logger
from policytune.corpus.config import ScrapeConfig
from policytune.corpus.fetch import ROBOTS_MAX_BYTES, finish_html, new_record
from policytune.corpus.urls import local_url

HTML_SUFFIXES = (".html", ".htm", ".xhtml")
FOLDER_SUFFIXES = (".html", ".htm")
OUTSIDE = "symlink_outside_source"

log = get_logger("scrape")


@dataclass
class LocalSource:
    url: str
    path: Path | None                    # None: does not exist
    site_root: Path | None = None        # the folder source this file was found in
    outside: str | None = None           # set: a symlink leaving its source (the error to record)


def _inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` resolved (every symlink followed) is ``folder`` (resolved) or below it."""
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError):  # a symlink loop
        return False
    return resolved == folder or folder in resolved.parents


def _lexical_url(path: Path, root: Path) -> str:
    """``file:<path relative to root>`` of the link itself (its folder resolved, the link not
    followed): the name a symlink is reported under."""
    try:
        link = path.parent.resolve() / path.name
    except (OSError, RuntimeError):
        link = path
    try:
        return "file:" + link.relative_to(root.resolve()).as_posix()
    except ValueError:
        return "file:" + link.as_posix()


def _outside_error(link_url: str, kind: str = "file") -> str:
    return (f"{link_url[5:]} is a symlinked {kind} that leads outside its source folder; it "
            "was not read (copy the target into the folder, or name it as a source itself)")


def expand_local(source: str, root: Path) -> list[LocalSource]:
    """Files of a local file or folder source. Folders give every *.html/*.htm below them
    (hidden files and folders skipped), sorted by relative path; symlinks that leave the
    source folder give rows marked ``outside`` instead (see the module docstring)."""
    raw = source[5:] if source.startswith("file:") else source
    path = Path(raw)
    if not path.is_absolute():
        path = root / path
    if path.is_dir():
        return _expand_folder(path, root)
    if not path.exists() and not path.is_symlink():
        return [LocalSource(local_url(path, root), None)]
    folder = path.parent.resolve()
    if path.is_symlink() and not _inside(path, folder):
        url = _lexical_url(path, root)
        return [LocalSource(url, path, outside=_outside_error(url))]
    return [LocalSource(local_url(path, root), path if path.exists() else None)]


def _expand_folder(path: Path, root: Path) -> list[LocalSource]:
    folder = path.resolve()
    found: list[tuple[str, LocalSource]] = []
    for dirpath, dirnames, filenames in os.walk(path, followlinks=False):
        here = Path(dirpath)
        keep = []
        for name in sorted(dirnames):
            if name.startswith("."):
                continue
            sub = here / name
            if sub.is_symlink():  # not descended into; reported if it leaves the folder
                if not _inside(sub, folder):
                    url = _lexical_url(sub, root)
                    found.append(((sub.relative_to(path)).as_posix(),
                                  LocalSource(url, sub, path, _outside_error(url, "folder"))))
                continue
            keep.append(name)
        dirnames[:] = keep
        for name in filenames:
            f = here / name
            if name.startswith(".") or f.suffix.lower() not in FOLDER_SUFFIXES:
                continue
            rel = f.relative_to(path).as_posix()
            if f.is_symlink() and not _inside(f, folder):
                url = _lexical_url(f, root)
                found.append((rel, LocalSource(url, f, path, _outside_error(url))))
            elif f.is_file():
                found.append((rel, LocalSource(local_url(f, root), f, path)))
    if not found:
        return [LocalSource(local_url(path, root), path)]  # recorded as empty_source
    return [src for _, src in sorted(found, key=lambda kv: kv[0])]


def local_robots(folder: Path, cache: dict) -> Protego | None:
    """The robots.txt at the root of a folder source (a saved copy of a site), if any. A
    robots.txt that is a symlink leaving the folder is not read (as if absent)."""
    if folder not in cache:
        rp = None
        robots = folder / "robots.txt"
        if robots.is_file():
            if _inside(robots, folder.resolve()):
                with open(robots, "rb") as f:
                    text = f.read(ROBOTS_MAX_BYTES).decode("utf-8", "replace")
                rp = Protego.parse(text)
            else:
                log.warning("%s/robots.txt is a symlink leading outside the folder; ignored",
                            folder.name)
        cache[folder] = rp
    return cache[folder]


def read_local(src: LocalSource, cfg: ScrapeConfig,
               robots_cache: dict | None = None) -> tuple[dict, str | None]:
    """Read one local file into a manifest row. A folder source with a robots.txt at its
    root is treated like the site it mirrors: disallowed files become robots_disallowed."""
    url, path = src.url, src.path
    rec = new_record(url)
    rec["final_url"] = url
    if src.outside is not None:
        rec.update(status=OUTSIDE, error=src.outside)
        return rec, None
    if path is None:
        rec.update(status="not_found", error=f"no such file or folder: {url[5:]}")
        return rec, None
    if path.is_dir():
        rec.update(status="empty_source", error="folder holds no *.html or *.htm files")
        return rec, None
    if cfg.respect_robots and src.site_root is not None:
        rp = local_robots(src.site_root, robots_cache if robots_cache is not None else {})
        site_path = "/" + path.relative_to(src.site_root).as_posix()
        if rp is not None and not rp.can_fetch(site_path, cfg.user_agent):
            rec.update(status="robots_disallowed",
                       error=f"{site_path} is disallowed by the robots.txt at the root of "
                             "its folder source")
            return rec, None
    rec["attempts"] = 1
    if path.suffix.lower() not in HTML_SUFFIXES:
        rec.update(status="unsupported_content_type",
                   error=f"local file {path.name} is not .html/.htm/.xhtml")
        return rec, None
    try:
        with open(path, "rb") as f:
            body = f.read(cfg.max_bytes + 1)
    except OSError as e:
        rec.update(status="read_error", error=str(e))
        return rec, None
    if len(body) > cfg.max_bytes:
        rec.update(status="too_large", error=f"file exceeds max_bytes={cfg.max_bytes}",
                   bytes=len(body))
        return rec, None
    rec.update(bytes=len(body), sha256=records.sha256_bytes(body),
               content_type="application/xhtml+xml" if path.suffix.lower() == ".xhtml"
               else "text/html")
    return finish_html(rec, body, {})
