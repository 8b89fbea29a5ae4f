"""The job store: jobs, their append-only event log and the node-output cache, in SQLite (WAL) or PostgreSQL
(`protocol.AsyncJobStore`, `backends.open_job_store`)."""

from comfymesh.jobs.store import CacheEntry, DamagedDatabaseError, JobRecord, JobStore, UnreadableJob

__all__ = ["CacheEntry", "DamagedDatabaseError", "JobRecord", "JobStore", "UnreadableJob"]
