"""JSON text that only comfymesh reads back (gRPC fields, job-store rows), written and read by orjson.

The standard library's encoder costs ~10x as much, and a job's prompt is written several times on its
way to the stage. Text that people or other tools read byte for byte (PNG metadata, cache signatures,
API responses) keeps its own encoder. Values orjson refuses (integers beyond 64 bits, non-string keys)
fall back to the standard library, and so do texts orjson cannot read (NaN literals), so both accept
the same values.
"""

from __future__ import annotations

import json
from typing import Any

import orjson


def dumps(value: Any) -> str:
    """`value` as compact JSON text."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return json.dumps(value)


def loads(text: str | bytes) -> Any:
    """The value of JSON text; invalid text raises json.JSONDecodeError, as the standard library does."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)
