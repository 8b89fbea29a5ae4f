"""The job store: jobs, their append-only event log and the node-output cache, in SQLite (WAL)."""

from comfymesh.contracts.events import JobEvent as EventRecord  # shim: the gateway's import (issue 13)
from comfymesh.jobs.store import CacheEntry, DamagedDatabaseError, JobRecord, JobStore, UnreadableJob

__all__ = ["CacheEntry", "DamagedDatabaseError", "EventRecord", "JobRecord", "JobStore", "UnreadableJob"]
