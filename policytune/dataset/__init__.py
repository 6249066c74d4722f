"""Layer 3 — dataset: chunks -> QA pairs (prompt, parse, gates) -> splits -> augmented train rows."""
