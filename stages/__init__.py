"""One module per DVC stage, each runnable as ``python -m stages.<name>``.

Run that way (``sys.argv[0]`` is ``-m`` while this package is imported), the process first
re-executes itself once under jemalloc, before the stage module and torch are imported: glibc's
malloc keeps the memory PyTorch frees, so a long stage's resident memory climbs
(:mod:`policytune.core.allocator`; ``POLICYTUNE_ALLOCATOR=system`` opts out). Imported by
tests or tools, nothing happens.
"""

import sys

if sys.argv[:1] == ["-m"]:
    from policytune.core import allocator

    allocator.NOTE = allocator.reexec_under_jemalloc()
