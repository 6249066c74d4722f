"""Layer 0 — core: JSONL/JSON records and atomic writes, params loading, logging and progress,
content-addressed caches, folder hashing and swapping. Imports nothing else of policytune."""
