"""Hop marks for latency work: with COMFYMESH_TRACE=1 every mark writes one JSON line to stderr.

`{"trace": "<point>", "t": <wall-clock seconds>}`. `bench/diffusion_gpu.py --trace` lines the marks of
every service up per job, with the client's own, into the hop-by-hop table of bench/README.md. They go
straight to stderr, not through logging: a mark then costs microseconds and barely moves what it
measures. Off by default, when a mark is one flag check.
"""

from __future__ import annotations

import sys
import time

from comfymesh.config import get_settings


def mark(point: str) -> None:
    """Record that this process reached `point` (a dotted name without quotes) now."""
    if get_settings().trace:
        sys.stderr.write(f'{{"trace": "{point}", "t": {time.time():.6f}}}\n')
