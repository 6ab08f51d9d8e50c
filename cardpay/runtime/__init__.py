"""Process-wide runtime settings applied by the long-running commands."""

from __future__ import annotations

import gc


def tune_gc() -> None:
    """Fewer cyclic-GC passes for allocation-heavy indexing.

    The listener allocates several small immutable objects per log and keeps none of them in
    cycles; with the default gen-0 threshold (700) the collector re-scans every live batch object
    again and again, which measured as over half the decode time. Objects alive at start-up are
    frozen out of collection altogether.
    """
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
