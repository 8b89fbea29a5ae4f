"""The one background thread that builds every bucket's fast tiers, and its wait for a quiet moment."""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable

from comfymesh.config import get_settings
from comfymesh.config.fast_path import FastPathSettings

log = logging.getLogger(__name__)

CAPTURE, COMPILE = 0, 1  # builder priorities


class _Builder:
    """One background thread builds every bucket's tiers, quick graph captures before slow compiles, so a
    new bucket never waits behind another bucket's compilation for its first fast tier."""

    def __init__(self) -> None:
        self._queue: queue.PriorityQueue[tuple[int, int, Callable[[], None]]] = queue.PriorityQueue()
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, priority: int, work: Callable[[], None]) -> None:
        self._queue.put((priority, next(self._seq), work))
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="comfymesh-compile", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            priority, _, work = self._queue.get()
            if priority == COMPILE:
                _wait_until_idle(get_settings())
            try:
                work()
            except Exception:  # one bad build must not stop the builder for every other bucket
                log.exception("fast path build step failed")


def _wait_until_idle(settings: FastPathSettings) -> None:
    """Hold a compilation back until no UNet call ran for COMFYMESH_COMPILE_IDLE_S (default 2 s), at most
    COMFYMESH_COMPILE_MAX_DEFER_S (default 300 s): tracing holds the GIL for seconds at a time, and jobs
    then crawl, so it goes into a quiet moment (after a restart, the first jobs run on the graphed tier)."""
    give_up = time.monotonic() + settings.compile_max_defer_s
    while time.monotonic() < give_up and time.monotonic() - _activity["last_call"] < settings.compile_idle_s:
        time.sleep(0.2)


_activity = {"last_call": 0.0}
_builder = _Builder()


def submit(priority: int, work: Callable[[], None]) -> None:
    """Queue one build step (CAPTURE or COMPILE) on the builder thread, started on first use."""
    _builder.submit(priority, work)


def note_call() -> None:
    """A fast module was called: compilations wait until such calls pause."""
    _activity["last_call"] = time.monotonic()
