"""The orders a job listing comes in: the gateway asks for one, the orchestrator's store sorts by it."""

from __future__ import annotations

from enum import StrEnum


class JobOrder(StrEnum):
    QUEUE = "queue"        # run order: number, then submission
    NEWEST = "newest"      # submitted, newest first
    OLDEST = "oldest"
    LONGEST = "longest"    # execution time, longest first (a job not finished counts as 0)
    SHORTEST = "shortest"
