"""Slows down token guessing, on the login form and on every route and transport that takes a token."""

from __future__ import annotations

import math
import time

_MAX_ADDRESSES = 10_000

class Lockout:
    """After `free` wrong tokens in a row from one address, that address is refused for `base_s`, doubling with
    each further miss up to `max_s`; a right token clears the record. Behind a reverse proxy every client
    shares the proxy's address, so one guesser there locks out all token clients (session cookies still work)."""

    def __init__(self, free: int = 5, base_s: float = 30.0, max_s: float = 900.0) -> None:
        self.free, self.base_s, self.max_s = free, base_s, max_s
        self._misses: dict[str, tuple[int, float]] = {}  # address -> (wrong tokens in a row, locked until)

    def wait_s(self, address: str) -> int:
        """Whole seconds this address must still wait (0: it may try)."""
        _, until = self._misses.get(address, (0, 0.0))
        return max(0, math.ceil(until - time.monotonic()))

    def failed(self, address: str) -> None:
        now = time.monotonic()
        if len(self._misses) > _MAX_ADDRESSES:  # a flood of addresses must not grow the record forever
            self._misses = {a: entry for a, entry in self._misses.items() if entry[1] > now - self.max_s}
        count = self._misses.get(address, (0, 0.0))[0] + 1
        lock = 0.0 if count < self.free else min(self.max_s, self.base_s * 2 ** (count - self.free))
        self._misses[address] = (count, now + lock)

    def succeeded(self, address: str) -> None:
        self._misses.pop(address, None)


__all__ = ["Lockout"]
