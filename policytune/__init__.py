"""policytune: shared code used by two or more pipeline stages.

Each stage lives in ``stages/<name>.py``; this package holds only what stages share:
JSONL records (:mod:`policytune.records`), params loading (:mod:`policytune.params`),
progress logging (:mod:`policytune.progress`), chat formatting (:mod:`policytune.chat`),
model resolution/loading (:mod:`policytune.models`) and LLM backends (:mod:`policytune.llm`).
"""

__version__ = "0.1.0"
