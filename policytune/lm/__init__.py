"""Layer 2 — lm: language models offline (catalog, GGUF conversion, loading, chat format,
generation, the batching engine, teacher/judge backends, the encoder and retrieval)."""
