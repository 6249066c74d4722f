"""The scrape of policy pages: sources (http(s) URLs, local files and folders) -> manifest
rows and UTF-8 page texts, their counts, and the files on disk.

``scrape`` fetches every source (and, with ``crawl``, the pages it links to); ``summarise``
counts the rows; ``failure_summary`` explains a run below ``min_ok_fraction``;
``write_outputs`` writes pages, manifest and counts atomically.

A page's identity (its manifest ``url``, hence its file name, doc id, the PDF's "Source:"
line and its chunks' urls downstream) is its URL redacted at this boundary: no
``user:password@`` and no ``scrape.secret_query_keys`` pairs. The request uses the URL as
given; two URLs that differ only in their secrets are one page (the first is fetched).
Statuses added by the safety checks: ``private_redirect`` (fetch.redirect_veto) and
``symlink_outside_source`` (local.expand_local).
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import requests

from policytune.core import records
from policytune.core.progress import Progress, get_logger
from policytune.corpus.config import ScrapeConfig
from policytune.corpus.fetch import Fetcher, new_record
from policytune.corpus.local import LocalSource, expand_local, read_local
from policytune.corpus.urls import (domain_allowed, extract_links, host_of, is_web, normalize_url,
                                    redact_url, safe_filename, scrub)

log = get_logger("scrape")

OUT_DIR = Path("data/raw")


@dataclass
class ScrapeResult:
    records: list[dict]                 # manifest rows, sorted by url
    pages: dict[str, str]               # row path -> UTF-8 HTML text, for every ok row
    crawl_skipped: int = 0              # URLs found after max_pages was reached


def scrape(sources: Iterable[str], cfg: ScrapeConfig, *, session: requests.Session | None = None,
           root: str | Path = ".", pages_dir: str | Path = OUT_DIR / "pages",
           fetcher: Fetcher | None = None) -> ScrapeResult:
    """Fetch every source (and, with ``cfg.crawl``, the pages it links to).

    Pure apart from the network and reading local sources: returns the manifest rows and the
    page texts; ``write_outputs`` puts them on disk. Row ``path`` is ``pages_dir/<safe name>``.
    """
    root = Path(root)
    fetcher = fetcher or Fetcher(cfg, session)
    sources = list(sources)
    rows: dict[str, dict] = {}
    texts: dict[str, str] = {}

    web, local = _split_sources(sources, root, rows, cfg)

    domains = list(cfg.allowed_domains) or sorted({host_of(u) for u in web})
    queue: deque[tuple[str, int]] = deque()
    seen: set[str] = set(rows)  # identities (redacted URLs)
    for url in web:
        ident = redact_url(url, cfg.secret_query_keys)
        if ident not in seen:
            seen.add(ident)
            queue.append((url, 0))
    unique_local = []
    for src in local:
        if src.url not in seen:
            seen.add(src.url)
            unique_local.append(src)
    local = unique_local

    progress = Progress(log, "pages", len(queue) + len(local))
    _read_local_sources(local, cfg, rows, texts, progress)
    skipped = _crawl(queue, seen, domains, fetcher, cfg, rows, texts, progress)
    if skipped:
        log.warning("crawl: %d more URLs found after max_pages=%d were not fetched",
                    len(skipped), cfg.max_pages)

    pages: dict[str, str] = {}
    pages_dir = Path(pages_dir)
    for url, text in texts.items():
        path = (pages_dir / safe_filename(url)).as_posix()
        rows[url]["path"] = path
        pages[path] = text
    return ScrapeResult([rows[u] for u in sorted(rows)], pages, len(skipped))


def _split_sources(sources: list[str], root: Path, rows: dict[str, dict],
                   cfg: ScrapeConfig | None = None) -> tuple[list[str], list[LocalSource]]:
    """Normalised http(s) sources (unredacted, as requested) and expanded local ones; a
    source that is neither becomes its failure row in ``rows`` (invalid_url,
    unsupported_scheme), its url and error redacted."""
    keys = (cfg or ScrapeConfig()).secret_query_keys
    web: list[str] = []
    local: list[LocalSource] = []
    for source in sources:
        if is_web(source):
            try:
                web.append(normalize_url(source))
                continue
            except ValueError as e:
                shown = redact_url(source.strip(), keys)
                status, error = "invalid_url", scrub(f"cannot parse URL {shown!r}: {e}", (), keys)
        elif "://" in source:
            status, error = "unsupported_scheme", "only http(s) URLs and local paths are supported"
        else:
            local.extend(expand_local(source, root))
            continue
        rec = new_record(redact_url(source.strip(), keys))
        rec.update(status=status, final_url=rec["url"], error=error)
        rows.setdefault(rec["url"], rec)
    return web, local


def _read_local_sources(local: list[LocalSource], cfg: ScrapeConfig, rows: dict[str, dict],
                        texts: dict[str, str], progress: Progress) -> None:
    """Read every local source into ``rows`` (and its text into ``texts`` when ok)."""
    robots_cache: dict = {}
    for src in local:
        rec, text = read_local(src, cfg, robots_cache)
        rows[src.url] = rec
        if text is not None:
            texts[src.url] = text
        if rec["status"] != "ok":
            log.warning("%s: %s (%s)", src.url, rec["status"], rec["error"])
        progress.update()


def _crawl(queue: deque[tuple[str, int]], seen: set[str], domains: list[str], fetcher: Fetcher,
           cfg: ScrapeConfig, rows: dict[str, dict], texts: dict[str, str],
           progress: Progress) -> set[str]:
    """Fetch the queued URLs (breadth first), queueing the links of ok pages while ``cfg.crawl``
    allows; returns the URLs (identities) found after ``max_pages`` was reached. Queued URLs
    are as requested; ``rows``, ``texts``, ``seen`` and the log use their redacted identity."""
    final_urls: dict[str, str] = {}
    skipped: set[str] = set()  # found after max_pages
    while queue:
        url, depth = queue.popleft()
        rec, text, final_requested = fetcher.fetch_page(url, depth, domains if depth > 0 else None)
        ident, final = rec["url"], rec.get("final_url")
        if rec["status"] == "ok" and final in final_urls:
            rec.update(status="duplicate", error=f"same final_url as {final_urls[final]}")
            text = None
        elif rec["status"] == "ok":
            final_urls[final] = ident
        rows[ident] = rec
        if text is not None:
            texts[ident] = text
            if cfg.crawl and depth < cfg.max_depth and domain_allowed(final, domains):
                for link in extract_links(text, final_requested):
                    link_ident = redact_url(link, cfg.secret_query_keys)
                    if link_ident in seen or not domain_allowed(link, domains):
                        continue
                    if len(seen) >= cfg.max_pages:
                        skipped.add(link_ident)
                        continue
                    seen.add(link_ident)
                    queue.append((link, depth + 1))
                    progress.total += 1
        if rec["status"] != "ok":
            log.warning("%s: %s (%s)", ident, rec["status"], rec["error"])
        progress.update()
    return skipped


def summarise(result: ScrapeResult | list[dict]) -> dict:
    rows = result.records if isinstance(result, ScrapeResult) else result
    by_reason = Counter(r["status"] for r in rows if r["status"] not in ("ok", "duplicate"))
    ok = sum(r["status"] == "ok" for r in rows)
    duplicates = sum(r["status"] == "duplicate" for r in rows)
    total = len(rows)
    counted = total - duplicates
    return {
        "sources": total,
        "ok": ok,
        "failed": sum(by_reason.values()),
        "failed_by_reason": dict(sorted(by_reason.items())),
        "duplicates": duplicates,
        "ok_fraction": round(ok / counted, 4) if counted else 0.0,
        "bytes": sum(r["bytes"] or 0 for r in rows if r["status"] == "ok"),
        "retries": sum(max(0, (r["attempts"] or 0) - 1) for r in rows),
        "crawl_skipped": result.crawl_skipped if isinstance(result, ScrapeResult) else 0,
    }


def failure_summary(rows: list[dict], stats: dict, cfg: ScrapeConfig,
                    manifest: str | Path = OUT_DIR / "manifest.jsonl") -> str:
    """One paragraph: how many succeeded against the threshold, and failures by reason with
    up to three example URLs and the first error for each."""
    parts = []
    for reason, n in sorted(stats["failed_by_reason"].items(), key=lambda kv: (-kv[1], kv[0])):
        bad = [r for r in rows if r["status"] == reason]
        examples = ", ".join(r["url"] for r in bad[:3]) + (", ..." if n > 3 else "")
        parts.append(f"{reason} x{n} ({examples}; e.g. {bad[0]['error']})")
    counted = stats["sources"] - stats["duplicates"]
    return (f"scrape failed: only {stats['ok']} of {counted} pages succeeded "
            f"({100 * stats['ok_fraction']:.0f}% < min_ok_fraction {100 * cfg.min_ok_fraction:.0f}%). "
            f"Failures by reason: {'; '.join(parts) or 'none (no sources at all)'}. "
            f"Every row is in {manifest}; fix scrape.sources in params.yaml, or lower "
            f"scrape.min_ok_fraction if these failures are expected.")


def write_outputs(result: ScrapeResult, out_dir: str | Path, stats_path: str | Path,
                  stats: dict, root: str | Path = ".") -> None:
    """Pages (only changed ones rewritten), stale pages removed, manifest, stats; atomic."""
    root, out_dir = Path(root), Path(out_dir)
    pages_dir = out_dir / "pages"
    pages_dir.mkdir(parents=True, exist_ok=True)
    keep = set()
    for rel, text in result.pages.items():
        path = Path(rel) if Path(rel).is_absolute() else root / rel
        # safe_filename guarantees this; checked again because a wrong write is not undoable
        if path.resolve().parent != pages_dir.resolve():
            raise RuntimeError(f"refusing to write {path} outside {pages_dir}")
        data = text.encode("utf-8")
        if not path.exists() or path.read_bytes() != data:
            records.atomic_write_bytes(path, data)
        keep.add(path.name)
    for stale in sorted(pages_dir.iterdir()):
        if stale.name not in keep and (stale.is_file() or stale.is_symlink()):
            log.info("removing stale page %s", stale.name)
            stale.unlink()
    records.write_jsonl(out_dir / "manifest.jsonl", result.records)
    records.write_json(stats_path, stats)
