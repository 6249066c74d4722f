"""Local sources of the scraper: HTML files and folders (a saved copy of a site, whose
robots.txt at the root is honoured), read into the same manifest rows as fetched pages."""

from __future__ import annotations

import urllib.robotparser
from dataclasses import dataclass
from pathlib import Path

from policytune.core import records
from policytune.corpus.config import ScrapeConfig
from policytune.corpus.fetch import ROBOTS_MAX_BYTES, finish_html, new_record
from policytune.corpus.urls import local_url

HTML_SUFFIXES = (".html", ".htm", ".xhtml")


@dataclass
class LocalSource:
    url: str
    path: Path | None                    # None: does not exist
    site_root: Path | None = None        # the folder source this file was found in


def expand_local(source: str, root: Path) -> list[LocalSource]:
    """Files of a local file or folder source. Folders give every *.html/*.htm below them
    (hidden files and folders skipped), sorted by relative path."""
    raw = source[5:] if source.startswith("file:") else source
    path = Path(raw)
    if not path.is_absolute():
        path = root / path
    if path.is_dir():
        files = sorted(
            (p for p in path.rglob("*")
             if p.suffix.lower() in (".html", ".htm") and p.is_file()
             and not any(part.startswith(".") for part in p.relative_to(path).parts)),
            key=lambda p: p.relative_to(path).as_posix())
        if not files:
            return [LocalSource(local_url(path, root), path)]  # recorded as empty_source
        return [LocalSource(local_url(p, root), p, path) for p in files]
    return [LocalSource(local_url(path, root), path if path.exists() else None)]


def local_robots(folder: Path, cache: dict) -> urllib.robotparser.RobotFileParser | None:
    """The robots.txt at the root of a folder source (a saved copy of a site), if any."""
    if folder not in cache:
        rp = None
        robots = folder / "robots.txt"
        if robots.is_file():
            rp = urllib.robotparser.RobotFileParser()
            rp.parse(robots.read_bytes()[:ROBOTS_MAX_BYTES].decode("utf-8", "replace").splitlines())
        cache[folder] = rp
    return cache[folder]


def read_local(src: LocalSource, cfg: ScrapeConfig,
               robots_cache: dict | None = None) -> tuple[dict, str | None]:
    """Read one local file into a manifest row. A folder source with a robots.txt at its
    root is treated like the site it mirrors: disallowed files become robots_disallowed."""
    url, path = src.url, src.path
    rec = new_record(url)
    rec["final_url"] = url
    if path is None:
        rec.update(status="not_found", error=f"no such file or folder: {url[5:]}")
        return rec, None
    if path.is_dir():
        rec.update(status="empty_source", error="folder holds no *.html or *.htm files")
        return rec, None
    if cfg.respect_robots and src.site_root is not None:
        rp = local_robots(src.site_root, robots_cache if robots_cache is not None else {})
        site_path = "/" + path.relative_to(src.site_root).as_posix()
        if rp is not None and not rp.can_fetch(cfg.user_agent, site_path):
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
