"""Layer 8 — tools: developer and team tooling (PR review comment, local S3 remote, console script)."""
