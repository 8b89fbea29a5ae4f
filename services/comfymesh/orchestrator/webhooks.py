"""Signed webhooks for finished jobs, in the Standard Webhooks format, retried with backoff.

Receivers verify `webhook-signature` = "v1," + base64(HMAC-SHA256(secret, f"{id}.{timestamp}.{body}")).
Deliveries go through the outbound-request policy (`comfymesh.outbound`), follow no redirects, and leave
only a generic error in the job's events: what the target answered stays in the orchestrator's log, so a
webhook cannot be used to probe what the orchestrator can reach.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import os
import secrets
import time
from typing import Any
from urllib.parse import urlencode

import httpx

from comfymesh.config import Settings
from comfymesh.config.policies import RetryPolicy
from comfymesh.contracts.events import EventType
from comfymesh.jobs.protocol import AsyncJobStore
from comfymesh.logs import log_fields
from comfymesh.orchestrator.events import EventBus
from comfymesh.outbound import OutboundClient, OutboundPolicy, OutboundRefused

log = logging.getLogger("comfymesh.orchestrator")
DELIVERY_POLICY = RetryPolicy(max_attempts=5, initial_backoff_s=1.0, backoff_multiplier=2.0, max_backoff_s=30.0)
DELIVERY_FAILED = "webhook delivery failed"
DELIVERY_REFUSED = "webhook refused by the outbound policy"
WEBHOOK_SECRET_NAME = "webhook"  # its name among a shared store's secrets


def output_images(outputs: dict[str, Any], base_url: str) -> list[dict[str, Any]]:
    """Each output image of a job with the absolute `/view` URL it is served at (under the gateway's public
    URL), so a receiver can fetch the images without asking for the job first."""
    images = [image for ui in outputs.values() if isinstance(ui, dict)
              for image in ui.get("images") or [] if isinstance(image, dict)]
    return [{**image, "url": f"{base_url}/view?" + urlencode({"filename": image.get("filename", ""),
                                                               "subfolder": image.get("subfolder", ""),
                                                               "type": image.get("type", "output")})}
            for image in images]


def sign(secret: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret, f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


async def webhook_secret(settings: Settings, store: AsyncJobStore) -> bytes:
    """COMFYMESH_WEBHOOK_SECRET, else the random secret kept in a shared store (every orchestrator sharing it
    signs with the same one), else the one in <home>/webhook_secret."""
    configured = settings.webhook_secret.get_secret_value()
    if configured:
        return configured.encode()
    shared = await store.shared_secret(WEBHOOK_SECRET_NAME)
    return shared.encode() if shared is not None else load_secret(settings)


def load_secret(settings: Settings) -> bytes:
    """COMFYMESH_WEBHOOK_SECRET, or a random secret kept in <home>/webhook_secret (created once, mode 600)."""
    configured = settings.webhook_secret.get_secret_value()
    if configured:
        return configured.encode()
    home = settings.home
    path = home / "webhook_secret"
    if not path.exists():
        home.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(32))
    os.chmod(path, 0o600)  # one written by hand, or by an older version, is tightened too
    return path.read_text().strip().encode()


class WebhookSender:
    def __init__(self, secret: bytes | None, bus: EventBus, outbound: OutboundPolicy,
                 policy: RetryPolicy = DELIVERY_POLICY) -> None:
        self.secret = secret  # None until loaded (`webhook_secret` needs the store: the scheduler's recovery)
        self.bus = bus
        self.outbound = outbound
        self.policy = policy
        self.tasks: set[asyncio.Task[None]] = set()

    def send(self, job_id: str, url: str, payload: dict[str, Any]) -> asyncio.Task[None]:
        """Deliver in the background; the task ends once the delivery is recorded (delivered or failed)."""
        if self.secret is None:
            raise RuntimeError("the webhook secret is not loaded yet (the scheduler's recovery loads it)")
        task = asyncio.create_task(self._deliver(self.secret, job_id, url, payload))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def _deliver(self, secret: bytes, job_id: str, url: str, payload: dict[str, Any]) -> None:
        body = json.dumps(payload, sort_keys=True).encode()
        message_id = f"msg_{job_id}_{payload['status']}"
        error = DELIVERY_FAILED
        async with OutboundClient(self.outbound) as client:
            for attempt in range(1, self.policy.max_attempts + 1):
                timestamp = int(time.time())
                headers = {"content-type": "application/json", "webhook-id": message_id,
                           "webhook-timestamp": str(timestamp),
                           "webhook-signature": sign(secret, message_id, timestamp, body)}
                try:
                    status = await client.post(url, content=body, headers=headers)
                except OutboundRefused as exc:  # checked before any connection; a retry gets the same answer
                    log.warning("webhook refused", extra=log_fields(job=job_id, error=str(exc)))
                    error = DELIVERY_REFUSED
                    break
                except httpx.HTTPError as exc:
                    log.warning("webhook delivery failed",
                                extra=log_fields(job=job_id, attempt=attempt, error=f"{type(exc).__name__}: {exc}"))
                else:
                    if status < 300:
                        await self.bus.emit(job_id, EventType.WEBHOOK_DELIVERED, data={"attempt": attempt})
                        return
                    log.warning("webhook delivery failed", extra=log_fields(job=job_id, attempt=attempt, status=status))
                    if status < 400:  # a redirect is not followed, and answers the same when tried again
                        break
                if attempt < self.policy.max_attempts:
                    await asyncio.sleep(self.policy.backoff(attempt))
        await self.bus.emit(job_id, EventType.WEBHOOK_FAILED, data={"error": error})
