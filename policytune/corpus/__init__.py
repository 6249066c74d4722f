"""Layer 1 — corpus: web pages and local files -> raw HTML -> PDFs -> text chunks (fetching,
charsets, URLs, robots.txt, main-content extraction, PDF layout, PDF text, chunking)."""
