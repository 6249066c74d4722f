"""policytune: the library behind the DVC stages in ``stages/``.

Packages are layers by pipeline phase; a module imports only from its own layer or lower ones
(``tests/unit/test_layers.py`` enforces it), and nothing imports ``stages``:

    core        records, params, logging/progress, caches, folder hashes      (layer 0)
    corpus      fetch, charsets, URLs, main content, PDF layout/text, chunking (1)
    lm          catalog, GGUF, loading, chat format, generation, engine, backends, embedding (2)
    dataset     QA prompt/parse/gates, split, augmentation                    (3)
    training    encoding, batching, LoRA loss, DDP, loop, checkpoints, export  (4)
    evaluation  answers, RAG, scoring, bootstrap metrics, judge              (5)
    report      paper-style report                                           (6)
    app         chat and serve                                               (7)
    tools       review comment, local S3, console script                     (8)
"""

__version__ = "0.1.0"
