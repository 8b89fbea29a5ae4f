"""A job's own options (id, priority, overall timeout, webhook, submitter), validated where a job is
accepted and again where a stored job is read back, so that no value a client chose can break the queue.

A job's stored options live under `extra_data["comfymesh"]`, written by the orchestrator alone: a client's
`extra_data` may not carry that key (ComfyUI-API clients pass their options as `extra_data.comfymesh`,
which the gateway takes out and turns into fields: `requested_options`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from comfymesh.outbound import OutboundPolicy, OutboundRefused, parse_url

MAX_TIMEOUT_S = 7 * 24 * 3600.0
MAX_JOB_ID_LENGTH = 128
MAX_USER_LENGTH = 256
# an idempotency key: URL- and header-safe, so it can be logged, stored and echoed as is
IDEMPOTENCY_KEY_PATTERN = r"^[A-Za-z0-9._~-]{1,128}$"
MAX_IDEMPOTENCY_KEY_LENGTH = 128
_IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN)
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
STORED_KEY = "comfymesh"
# what a ComfyUI-API client may set in extra_data.comfymesh
CLIENT_KEYS = ("timeout_s", "webhook_url")


class InvalidJobOptions(ValueError):
    """An option is out of its range or of the wrong type; the message names it and says what is allowed."""


def _printable(name: str, value: str, limit: int) -> None:
    if len(value) > limit:
        raise InvalidJobOptions(f"{name} is longer than {limit} characters")
    if not value.isprintable():
        raise InvalidJobOptions(f"{name} may not contain control characters")


@dataclass(frozen=True)
class JobOptions:
    """`timeout_s`: the job's overall timeout in seconds, 0 for the configured default, at most 7 days;
    `priority`: ComfyUI's `number` (smaller runs first), finite; `user`: who submitted it (the gateway's
    principal, never a client's word)."""

    job_id: str = ""
    priority: float | None = None
    front: bool = False
    timeout_s: float = 0.0
    webhook_url: str = ""
    user: str = ""
    idempotency_key: str = ""
    request_digest: str = ""   # sha256 (hex) of the body the key came with

    def __post_init__(self) -> None:
        _printable("job_id", self.job_id, MAX_JOB_ID_LENGTH)
        if self.idempotency_key and not _IDEMPOTENCY_KEY.fullmatch(self.idempotency_key):
            raise InvalidJobOptions(f"idempotency_key must be 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} characters of "
                                    "A-Z a-z 0-9 . _ ~ -")
        if self.idempotency_key and not _DIGEST.fullmatch(self.request_digest):
            raise InvalidJobOptions("an idempotency_key needs the request_digest (sha256, hex) of its body")
        if self.priority is not None and not math.isfinite(self.priority):
            raise InvalidJobOptions("priority must be a finite number")
        if not (isinstance(self.timeout_s, int | float) and not isinstance(self.timeout_s, bool)
                and math.isfinite(self.timeout_s) and 0 <= self.timeout_s <= MAX_TIMEOUT_S):
            raise InvalidJobOptions(f"timeout_s must be a number of seconds above 0 and at most {MAX_TIMEOUT_S:g} "
                                    "(7 days), or 0 for the configured default")
        if not isinstance(self.webhook_url, str):
            raise InvalidJobOptions("webhook_url must be a string")
        if self.webhook_url:
            try:
                parse_url(self.webhook_url)
            except OutboundRefused as exc:
                raise InvalidJobOptions(f"webhook_url is refused: {exc}") from None
        if not isinstance(self.user, str):
            raise InvalidJobOptions("user must be a string")
        _printable("user", self.user, MAX_USER_LENGTH)

    def check_outbound(self, policy: OutboundPolicy) -> None:
        """Refuse a webhook that the outbound policy refuses without a DNS lookup (an address it may not reach)."""
        if self.webhook_url:
            try:
                policy.check_url(self.webhook_url)
            except OutboundRefused as exc:
                raise InvalidJobOptions(f"webhook_url is refused: {exc}") from None

    def stored(self) -> dict[str, Any]:
        """The options a job keeps in `extra_data["comfymesh"]` (the ones read again when it runs)."""
        return {key: value for key, value in (("timeout_s", self.timeout_s), ("webhook_url", self.webhook_url),
                                              ("user", self.user)) if value}

    @classmethod
    def from_stored(cls, extra_data: dict[str, Any]) -> JobOptions:
        """A stored job's options, checked again: a row from an older version may hold any value."""
        stored = extra_data.get(STORED_KEY) or {}
        if not isinstance(stored, dict):
            raise InvalidJobOptions(f"extra_data.{STORED_KEY} must be an object")
        return cls(timeout_s=stored.get("timeout_s", 0.0), webhook_url=stored.get("webhook_url", ""),
                   user=stored.get("user", ""))


def requested_options(raw: Any) -> dict[str, Any]:
    """The options a ComfyUI-API client asked for in `extra_data.comfymesh`, as submit keywords."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidJobOptions(f"extra_data.{STORED_KEY} must be an object with {' and/or '.join(CLIENT_KEYS)}")
    unknown = sorted(set(raw) - set(CLIENT_KEYS))
    if unknown:
        raise InvalidJobOptions(f"extra_data.{STORED_KEY} may set only {', '.join(CLIENT_KEYS)}; "
                                f"remove {', '.join(map(repr, unknown))}")
    options = JobOptions(timeout_s=raw.get("timeout_s", 0.0), webhook_url=raw.get("webhook_url", ""))
    return {"timeout_s": options.timeout_s, "webhook_url": options.webhook_url}
