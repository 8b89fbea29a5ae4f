"""Idempotency keys of /v1 submits: what a key may be, and the digest that tells a replay from a reuse.

The key never becomes a job id (job ids are always the orchestrator's): the orchestrator keeps each key, per
principal, beside the job it made and the digest of the body that made it.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import orjson

from comfymesh.contracts.job_options import IDEMPOTENCY_KEY_PATTERN as KEY_PATTERN
from comfymesh.contracts.job_options import MAX_IDEMPOTENCY_KEY_LENGTH as MAX_KEY_LENGTH

HEADER = "Idempotency-Key"
_KEY = re.compile(KEY_PATTERN)


__all__ = ["HEADER", "KEY_PATTERN", "MAX_KEY_LENGTH", "request_digest", "valid_key"]


def valid_key(key: str) -> bool:
    return bool(_KEY.fullmatch(key))


def request_digest(body: Any) -> str:
    """sha256 of the body with its keys sorted, so the same JSON sent with another key order is the same body."""
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()
