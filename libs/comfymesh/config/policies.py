"""Retry and timeout policies: small validated dataclasses with named timeout kinds."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a failed stage call is tried again (only when a retry can help)."""

    max_attempts: int = 3
    initial_backoff_s: float = 0.2
    backoff_multiplier: float = 2.0
    max_backoff_s: float = 5.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.initial_backoff_s < 0 or self.max_backoff_s < self.initial_backoff_s or self.backoff_multiplier < 1:
            raise ValueError("backoff must be non-negative, growing, and capped above its start")

    def backoff(self, attempt: int) -> float:
        """Delay before attempt `attempt + 1` (attempts count from 1)."""
        return float(min(self.initial_backoff_s * self.backoff_multiplier ** (attempt - 1), self.max_backoff_s))


@dataclass(frozen=True)
class TimeoutPolicy:
    """queue_wait: time a job may wait to start; attempt: one stage call; overall: the whole job;
    heartbeat: silence allowed from a stage between events (progress events are heartbeats)."""

    queue_wait_s: float = 24 * 3600.0
    attempt_s: float = 30 * 60.0
    overall_s: float = 30 * 60.0
    heartbeat_s: float = 300.0

    def __post_init__(self) -> None:
        for name in ("queue_wait_s", "attempt_s", "overall_s", "heartbeat_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")

    def with_overall(self, seconds: float | None) -> TimeoutPolicy:
        """A job's own overall timeout, when it asks for one."""
        return self if not seconds else replace(self, overall_s=float(seconds))
