"""The garbage collector of a long-running service: fewer collections on a job's path, none of the heap
that start-up made.

With Python's defaults (700, 10, 10) a service collects its youngest objects every 700 allocations and
its whole heap every hundred young collections. A stage holds torch and diffusers (hundreds of thousands
of objects): measured on the 2-core dev machine, a full collection took 100-200 ms and a middle one 1-3
ms, and they land inside jobs. So once start-up is done, every object alive is frozen (moved where the
collector never looks again). The thresholds stay Python's by default: raising them (10000,20,20) made
middle collections rarer but 50 ms long, and was no faster at the median on an H100 host
(bench/README.md, session 4).
"""

from __future__ import annotations

import gc


def parse_thresholds(text: str) -> tuple[int, int, int] | None:
    """"young,middle,old" as numbers; None for an empty text."""
    if not text.strip():
        return None
    young, middle, old = (int(part) for part in text.split(","))
    return young, middle, old


def settle(thresholds: tuple[int, int, int] | None) -> None:
    """Collect, freeze what survived start-up, then set the thresholds (None: leave the collector be)."""
    if thresholds is None:
        return
    gc.collect()
    gc.freeze()
    gc.set_threshold(*thresholds)
