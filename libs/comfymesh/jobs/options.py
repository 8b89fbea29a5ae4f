"""Moved to `comfymesh.contracts.job_options` (the gateway reads them too, and never imports the job store)."""

from comfymesh.contracts.job_options import (
    CLIENT_KEYS,
    MAX_JOB_ID_LENGTH,
    MAX_TIMEOUT_S,
    MAX_USER_LENGTH,
    STORED_KEY,
    InvalidJobOptions,
    JobOptions,
    requested_options,
)

__all__ = ["CLIENT_KEYS", "MAX_JOB_ID_LENGTH", "MAX_TIMEOUT_S", "MAX_USER_LENGTH", "STORED_KEY", "InvalidJobOptions",
           "JobOptions", "requested_options"]
