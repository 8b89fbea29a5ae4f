"""The async `JobStore` protocol the orchestrator talks to, whichever backend holds the jobs.

Two backends: `SqliteJobStore` (one orchestrator, writes on the event loop) and `PostgresJobStore` (any number
of orchestrators sharing one database). Jobs a store instance claimed carry a lease (owner, lease_until,
epoch); every write for such a job is fenced on its epoch and raises `LeaseLost` once another orchestrator
has taken the job over.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from enum import StrEnum
from typing import Any, Protocol

from comfymesh.contracts.events import JobEvent
from comfymesh.contracts.job_order import JobOrder
from comfymesh.jobs.store import CacheEntry, JobRecord

CachedOutputs = tuple[list[dict[str, Any]], dict[str, Any] | None]


class LeaseLost(Exception):
    """A write for a job this orchestrator no longer holds (its lease expired and the job was re-queued, or
    it was handed back): the write was refused and nothing changed."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"the lease on job {job_id} was lost; another orchestrator may run it")
        self.job_id = job_id


class DatabaseUnreachableError(Exception):
    """The job database did not answer; the message names host:port, never the password."""


class JobExists(Exception):
    """`add_job` met a job id or idempotency key another submit stored first (ON CONFLICT)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id} already exists")
        self.job_id = job_id


class PeriodicTask(StrEnum):
    """Store-wide chores that one orchestrator at a time does (`AsyncJobStore.exclusive`)."""

    RETENTION = "retention"
    WEBHOOK_REDELIVERY = "webhook_redelivery"


class AsyncJobStore(Protocol):
    """What the orchestrator needs from a job store. Writes that record a change return the events they
    appended, in id order, for the event bus to publish."""

    shared: bool  # other orchestrators write to the same store (their events arrive by `listen`)

    async def close(self) -> None: ...

    async def listen(self, callback: Callable[[int], None]) -> None:
        """Call `callback(event id)` for each event another orchestrator appends (shared stores only)."""
        ...

    async def listen_cancels(self, callback: Callable[[str], None]) -> None:
        """Call `callback(job id)` whenever a cancel of a running job is requested (`request_cancel`)."""
        ...

    async def relay_transient(self, event: JobEvent) -> None:
        """Hand a live-only event (a preview) to the other orchestrators' subscribers (shared stores only)."""
        ...

    async def listen_transient(self, callback: Callable[[JobEvent], None]) -> None:
        """Call `callback(event)` for each live-only event another orchestrator relays (shared stores only)."""
        ...

    async def request_cancel(self, job_id: str) -> bool:
        """Ask whichever orchestrator runs the job to cancel it (a flag on the job, and a notification to the
        listeners); False when the job is not running."""
        ...

    async def cancels_requested(self) -> set[str]:
        """The running jobs this orchestrator holds whose cancel was requested (read by the lease keeper each
        cycle, so a missed notification still cancels)."""
        ...

    def exclusive(self, task: PeriodicTask) -> AbstractAsyncContextManager[bool]:
        """Hold the store-wide lock of a periodic chore for the block; it yields False (skip the chore) while
        another orchestrator holds it."""
        ...

    async def shared_secret(self, name: str) -> str | None:
        """The random secret `name` every orchestrator sharing the store uses, created once by whichever asks
        first; None for a store of one orchestrator (which keeps its secrets in files)."""
        ...

    # jobs --------------------------------------------------------------------------------------
    async def next_number(self) -> int:
        """The next queue number (ComfyUI's counter; it moves even when validation then fails)."""
        ...

    async def add_job(self, job_id: str, number: float, prompt: dict[str, Any], extra_data: dict[str, Any],
                      client_id: str, outputs_to_run: list[str], nodes: dict[str, str],
                      submitted: dict[str, Any] | None = None,
                      idempotency: tuple[str, str, str] | None = None) -> JobEvent:
        """Persist a job, its nodes and its `queued` event; raises JobExists when its id or key is taken."""
        ...

    async def get_job(self, job_id: str) -> JobRecord | None: ...
    async def idempotent_job(self, user: str, key: str) -> tuple[str, str] | None: ...
    async def job_status(self, job_id: str) -> str | None: ...

    async def list_jobs(self, statuses: list[str] | None = None, limit: int = 0, offset: int = 0,
                        order: JobOrder = JobOrder.QUEUE, workflow_id: str | None = None,
                        count_only: bool = False,
                        after: tuple[float, str] | None = None) -> tuple[list[JobRecord], int]: ...

    async def jobs_awaiting_webhook(self) -> list[str]: ...
    async def count_jobs(self, status: str) -> int: ...

    async def queued_node_classes(self) -> dict[str, set[str]]:
        """Each queued job's node class types (queue depth per stage, for /metrics)."""
        ...

    async def claim_next(self, exclude: set[str]) -> JobRecord | None:
        """Take the best queued job nobody holds (lease it to this store's owner); raises UnreadableJob."""
        ...

    async def requeue_orphans(self) -> list[JobEvent]:
        """At start-up: running jobs no live orchestrator holds go back to the queue (`requeued` events)."""
        ...

    async def requeue_expired(self) -> list[JobEvent]:
        """Jobs whose lease ran out go back to the queue (any orchestrator may do it); one whose cancel was
        requested ends cancelled instead (a `cancelled` event)."""
        ...

    async def renew_leases(self) -> set[str]:
        """Extend the leases this store holds; returns the jobs whose lease was lost instead."""
        ...

    async def release(self, job_id: str) -> None:
        """Stop holding a job (its task ended); a finished job needs no lease."""
        ...

    async def hand_back(self) -> list[JobEvent]:
        """Give every held lease back (SIGTERM): running jobs are re-queued for another orchestrator."""
        ...

    async def set_status(self, job_id: str, status: str, *, error: dict[str, Any] | None = None,
                         event: str | None = None, data: dict[str, Any] | None = None) -> JobEvent | None: ...

    async def start_job(self, job_id: str, cached: dict[str, dict[str, Any] | None]) -> list[JobEvent]: ...

    async def set_node_state(self, job_id: str, node_id: str, state: str, ui: dict[str, Any] | None = None,
                             event: str | None = None, data: dict[str, Any] | None = None,
                             cache: CacheEntry | None = None) -> JobEvent | None: ...

    async def finish_node(self, job_id: str, node_id: str, ui: dict[str, Any] | None, *, data: dict[str, Any],
                          cache: CacheEntry | None = None,
                          completed: dict[str, Any] | None = None) -> list[JobEvent]: ...

    async def set_node_states(self, job_id: str, nodes: dict[str, dict[str, Any] | None], state: str, *,
                              event: str | None = None, event_node: str = "", data: dict[str, Any] | None = None,
                              cache: list[CacheEntry] | None = None) -> JobEvent | None: ...

    async def node_states(self, job_id: str) -> list[dict[str, Any]]: ...
    async def delete_jobs(self, job_ids: list[str]) -> int: ...

    # events ------------------------------------------------------------------------------------
    async def append_event(self, job_id: str, type_: str, node_id: str = "",
                           data: dict[str, Any] | None = None) -> JobEvent: ...

    async def events_after(self, after_id: int, job_id: str | None = None, limit: int = 1000) -> list[JobEvent]: ...
    async def last_event_id(self) -> int: ...

    # node-output cache -------------------------------------------------------------------------
    async def cache_get_many(self, signatures: list[str]) -> dict[str, CachedOutputs]: ...
    async def cache_put(self, signature: str, class_type: str, outputs: list[dict[str, Any]],
                        ui: dict[str, Any] | None) -> None: ...
    async def cache_rows(self) -> list[tuple[str, str, float]]: ...
    async def cache_delete(self, signature: str) -> None: ...

    # model files' digests (name -> sha256 rows), each hashed once per version of the file
    async def model_digest(self, location: str, name: str, version: str) -> str | None:
        """The sha256 recorded for `name` in `location` (a models URL and folder) at `version`; None when
        never recorded or recorded for another version."""
        ...

    async def record_model_digest(self, location: str, name: str, version: str, size: int, sha256: str) -> None: ...
