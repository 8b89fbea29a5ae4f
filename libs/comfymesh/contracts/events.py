"""The job vocabulary every service speaks: job states, node states and event types, each defined once."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


# a job in one of these states never changes again
FINISHED_STATUSES = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})


class NodeState(StrEnum):
    """A node's state in a job's record (a node cut short by a failure or a cancel goes back to pending)."""

    PENDING = "pending"
    RUNNING = "running"
    CACHED = "cached"
    DONE = "done"
    FAILED = "failed"


class EventType(StrEnum):
    """What a job's event log records, in the order a job usually goes through them."""

    QUEUED = "queued"              # accepted and persisted
    REQUEUED = "requeued"          # an orchestrator restart put a running job back in the queue
    STARTED = "started"            # taken from the queue
    CACHED = "cached"              # nodes whose outputs came from the cache (data: node ids, UI results)
    NODE_RUNNING = "node_running"  # a stage began a node
    NODE_PROGRESS = "node_progress"
    NODE_PREVIEW = "node_preview"  # a small JPEG of the node's current state (never persisted)
    NODE_DONE = "node_done"        # a node's outputs are stored (data: UI result)
    RETRYING = "retrying"          # a stage call is tried again (lost replica, out of memory)
    COMPLETED = "completed"        # terminal: every output is done
    FAILED = "failed"              # terminal: data carries the error with its node
    CANCELLED = "cancelled"        # terminal: a user's cancel or interrupt
    WEBHOOK_DELIVERED = "webhook_delivered"
    WEBHOOK_FAILED = "webhook_failed"


# the event that ends a job's stream: exactly one per job, named like the job's final status
TERMINAL_EVENTS = frozenset({EventType.COMPLETED, EventType.FAILED, EventType.CANCELLED})


def is_terminal(event_type: str) -> bool:
    return event_type in TERMINAL_EVENTS


@dataclass(frozen=True)
class JobEvent:
    """One entry of a job's event log, as services pass it around (ids increase across all jobs)."""

    id: int
    job_id: str
    type: str
    node_id: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    ts: float = 0.0
