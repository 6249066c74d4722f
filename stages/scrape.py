"""scrape: policy web pages and local HTML files -> data/raw (UTF-8 pages + manifest).

Reads ``params.yaml`` section ``scrape`` (see ``ScrapeConfig`` for every key).
Writes:
  data/raw/pages/<safe name>.html   every page fetched OK, re-encoded as UTF-8
  data/raw/manifest.jsonl           one row per source or discovered URL, sorted by url
  data/stats/scrape.json            counts: sources, ok, failed, failed_by_reason, bytes, retries

Sources are http(s) URLs or local files/folders (a folder means every *.html / *.htm below
it, sorted; local pages get the url ``file:<path relative to the repository root>``).
Over http(s) the stage is a polite, bounded client: robots.txt (fetched once per host, read
per RFC 9309 by protego: wildcards, longest match wins), a User-Agent naming the project, a
delay between requests to one host, timeouts, retries with exponential backoff on 5xx / 429 /
connection errors (``Retry-After`` honoured up to a cap), a size cap, manually followed
redirects with loop detection, and charset decoding as browsers do it (BOM -> HTTP header ->
<meta>, labels by the WHATWG table -> UTF-8 -> windows-1252, charset-normalizer only as a
tie-breaker for undeclared pages that windows-1252 reads as mojibake). With ``crawl: true``
it also follows <a href> links from http(s) sources up to ``max_depth`` within
``allowed_domains``.

Safety: redirects (from sources too) to loopback, link-local (cloud metadata), private,
multicast or reserved addresses are refused (status ``private_redirect``) unless the source is
on such an address itself or ``allow_private_redirects`` is true; symlinks that lead out of a
local source folder are not read (status ``symlink_outside_source``); credentials in URLs
(``user:password@``, ``secret_query_keys`` such as ``?token=``) are sent but never recorded:
the manifest url / final_url (the page's identity downstream), page file names, errors and
log lines are redacted; all scans of page text are linear in its size.

Nothing is silently dropped: every failure is a manifest row with a status reason and an
error message, and the counts go to data/stats/scrape.json. The stage exits non-zero (after
writing everything) only when the fraction of OK rows is below ``min_ok_fraction``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from policytune.core.params import load_section
from policytune.core.progress import get_logger
from policytune.core.stage import stage_parser
from policytune.corpus.config import ScrapeConfig
from policytune.corpus.scrape import failure_summary, scrape, summarise, write_outputs

PATHS = {"out": "data/raw", "stats": "data/stats/scrape.json"}

log = get_logger("scrape")


def main(argv: list[str] | None = None) -> int:
    args = stage_parser(__doc__, "scrape", PATHS, ScrapeConfig).parse_args(argv)
    cfg = load_section(ScrapeConfig, "scrape", args.params)
    out_dir = Path(args.out)
    t0 = time.monotonic()
    result = scrape(cfg.sources, cfg, pages_dir=out_dir / "pages")
    stats = summarise(result)
    write_outputs(result, out_dir, args.stats, stats)
    log.info("%d rows: %d ok, %d failed %s, %d duplicates, %d bytes, %d retries in %.1fs",
             stats["sources"], stats["ok"], stats["failed"], stats["failed_by_reason"] or "",
             stats["duplicates"], stats["bytes"], stats["retries"], time.monotonic() - t0)
    if stats["sources"] == 0 or stats["ok_fraction"] < cfg.min_ok_fraction:
        print(failure_summary(result.records, stats, cfg, out_dir / "manifest.jsonl"),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
