"""Layer 6 — report: metric JSON and per-example rows -> Markdown/HTML report with plots."""
