"""Params of the corpus phase (``params.yaml`` sections), with their help text."""

from __future__ import annotations

from dataclasses import dataclass, field

from policytune.core.params import Fraction, NonNegFloat, NonNegInt, ParamsError, PositiveFloat, PositiveInt
from policytune.corpus.urls import DEFAULT_SECRET_QUERY_KEYS

USER_AGENT = "policytune/0.1 (+https://github.com/policytune/policytune)"


def _help(text: str) -> dict:
    return {"help": text}


@dataclass
class ScrapeConfig:
    sources: list[str] = field(
        default_factory=lambda: ["data/sample_site"],
        metadata=_help("http(s) URLs, local HTML files, or folders (all *.html/*.htm below, sorted)"))
    crawl: bool = field(default=False, metadata=_help(
        "follow <a href> links from http(s) sources (same site, see allowed_domains)"))
    max_depth: NonNegInt = field(default=1, metadata=_help("crawl depth; sources are depth 0"))
    allowed_domains: list[str] = field(default_factory=list, metadata=_help(
        "hosts the crawl may enter (subdomains included); empty = the hosts of the sources"))
    max_pages: PositiveInt = field(default=200, metadata=_help(
        "crawl stops discovering new URLs after this many rows (skipped URLs are counted)"))
    timeout_s: PositiveFloat = field(default=10.0, metadata=_help(
        "seconds allowed to connect, for each read, and for a whole response"))
    retries: NonNegInt = field(default=3, metadata=_help(
        "extra attempts after a 5xx, 429, timeout, connection error or broken body"))
    backoff_s: NonNegFloat = field(default=0.5, metadata=_help(
        "first retry waits this long, doubling each retry (unless Retry-After says otherwise)"))
    max_retry_after_s: NonNegFloat = field(default=30.0, metadata=_help(
        "longest Retry-After / Crawl-delay / backoff honoured; a longer Retry-After is a failure"))
    max_bytes: PositiveInt = field(default=5_000_000, metadata=_help(
        "largest response body read; larger -> status too_large"))
    max_redirects: NonNegInt = field(default=5, metadata=_help("redirect hops followed per URL"))
    allow_private_redirects: bool = field(default=False, metadata=_help(
        "follow redirects to loopback / link-local / private / reserved addresses even from a "
        "public source (off: status private_redirect; a source on such an address may always)"))
    secret_query_keys: list[str] = field(
        default_factory=lambda: list(DEFAULT_SECRET_QUERY_KEYS), metadata=_help(
            "query keys (case-insensitive) whose pairs are removed from every recorded URL, "
            "like user:password@ (the request still sends them)"))
    respect_robots: bool = field(default=True, metadata=_help(
        "fetch robots.txt once per host and skip disallowed URLs (status robots_disallowed)"))
    user_agent: str = field(default=USER_AGENT, metadata=_help(
        "User-Agent header; robots.txt rules are matched on its first token ('policytune')"))
    delay_s: NonNegFloat = field(default=0.5, metadata=_help(
        "minimum seconds between two requests to the same host (robots Crawl-delay wins if larger)"))
    min_ok_fraction: Fraction = field(default=0.5, metadata=_help(
        "the stage fails (after writing the manifest) when ok rows / all rows is below this"))

    def __post_init__(self):
        problems = [f"{name} must be {rule}" for name, ok, rule in (
            ("sources", all(isinstance(x, str) and x.strip() for x in self.sources),
             "a list of non-empty strings"),
            ("allowed_domains", all(isinstance(x, str) for x in self.allowed_domains),
             "a list of host names"),
            ("secret_query_keys", all(isinstance(x, str) and x.strip()
                                      for x in self.secret_query_keys),
             "a list of non-empty strings"),
            ("max_depth", self.max_depth >= 0, ">= 0"),
            ("max_pages", self.max_pages >= 1, ">= 1"),
            ("timeout_s", self.timeout_s > 0, "> 0"),
            ("retries", self.retries >= 0, ">= 0"),
            ("backoff_s", self.backoff_s >= 0, ">= 0"),
            ("max_retry_after_s", self.max_retry_after_s >= 0, ">= 0"),
            ("max_bytes", self.max_bytes >= 1, ">= 1"),
            ("max_redirects", self.max_redirects >= 0, ">= 0"),
            ("delay_s", self.delay_s >= 0, ">= 0"),
            ("user_agent", bool(self.user_agent.strip()), "non-empty"),
            ("min_ok_fraction", 0 <= self.min_ok_fraction <= 1, "between 0 and 1"),
        ) if not ok]
        if problems:
            raise ParamsError("params 'scrape': " + "; ".join(problems))
