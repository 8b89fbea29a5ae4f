"""The job store: jobs, their append-only event log and the node-output cache, in SQLite (WAL)."""

from comfymesh.jobs.store import (
    CacheEntry,
    DamagedDatabaseError,
    EventRecord,
    JobRecord,
    JobStatus,
    JobStore,
    UnreadableJob,
)

__all__ = ["CacheEntry", "DamagedDatabaseError", "EventRecord", "JobRecord", "JobStatus", "JobStore", "UnreadableJob"]
