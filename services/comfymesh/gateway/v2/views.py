"""Our jobs in Comfy API v2's shapes: statuses, progress, outputs as assets, errors, links, times."""

from __future__ import annotations

import mimetypes
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any
from urllib.parse import quote

from starlette.requests import HTTPConnection

from comfymesh.contracts.events import JobStatus, NodeState
from comfymesh.gateway.engine import Job
from comfymesh.gateway.v2.asset_store import AssetRecord, AssetStore

PREFIX = "/api/v2"


class V2Status(StrEnum):
    """A job's status in the Comfy API v2 contract (its vocabulary, not ours: see STATUS)."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    CANCELING = "canceling"
    CANCELED = "canceled"
    FAILED = "failed"
    EXPIRED = "expired"


STATUS = {JobStatus.QUEUED: V2Status.QUEUED, JobStatus.RUNNING: V2Status.RUNNING,
          JobStatus.COMPLETED: V2Status.SUCCEEDED, JobStatus.FAILED: V2Status.FAILED,
          JobStatus.CANCELLED: V2Status.CANCELED}
OURS = {v2: ours for ours, v2 in STATUS.items()}
TERMINAL = frozenset({V2Status.SUCCEEDED, V2Status.CANCELED, V2Status.FAILED, V2Status.EXPIRED})
# a UI result's key -> the kind of output its files are
OUTPUT_KINDS = {"images": "image", "gifs": "video", "videos": "video", "video": "video", "audio": "audio",
                "latents": "latent", "3d": "file"}
# the job's labels, kept beside ComfyUI's extra_data keys
METADATA_KEY = "comfy_api_v2_metadata"
# outputs are kept as long as the server keeps them: with no age limit, the contract's "retention deadline"
# is the end of time
NO_EXPIRY = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
# content URLs are served by the gateway itself with the caller's credentials: they do not go stale
URL_LIFETIME_S = 24 * 3600.0


def iso(ts: float | None) -> str | None:
    if ts is None or ts <= 0:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def now_iso(later_s: float = 0.0) -> str:
    return iso(datetime.now(UTC).timestamp() + later_s) or ""


def expires_at(created: float, output_max_age_s: float) -> str:
    if output_max_age_s > 0:
        return iso(created + output_max_age_s) or ""
    return NO_EXPIRY.isoformat().replace("+00:00", "Z")


def v2_status(job: Job) -> str:
    return STATUS.get(job.status, V2Status.FAILED)  # type: ignore[call-overload]


def urls(job_id: str) -> dict[str, str]:
    base = f"{PREFIX}/jobs/{quote(job_id, safe='')}"
    return {"self": base, "events": f"{base}/events", "cancel": f"{base}/cancel"}


def origin(connection: HTTPConnection) -> str:
    """scheme://host[:port] the client reached us on: content URLs must be absolute."""
    return f"{connection.url.scheme}://{connection.url.netloc}"


def asset_body(record: AssetRecord, base: str, created_new: bool | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": record.id, "hash": record.hash, "size_bytes": record.size_bytes, "content_type": record.content_type,
        "file_path": record.file_path, "created_at": iso(record.created_at) or now_iso(),
        "url": f"{base}{PREFIX}/assets/{record.id}/content", "url_expires_at": now_iso(URL_LIFETIME_S)}
    if created_new is not None:
        body["created_new"] = created_new
    if record.job_id is not None:
        body["job_id"] = record.job_id
    return body


def output_files(ui: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(kind, file entry) of every file in an output node's UI result; unknown keys holding files are `file`."""
    found = []
    for key, items in ui.items():
        if not isinstance(items, list):
            continue
        for item in items:
            if isinstance(item, dict) and isinstance(item.get("filename"), str) and item["filename"]:
                found.append((OUTPUT_KINDS.get(key, "file"), item))
    return found


def output_body(store: AssetStore, job_id: str, node_id: str, kind: str, item: dict[str, Any],
                base: str) -> dict[str, Any] | None:
    """One output as the contract shows it (blocking: the first sight of a file hashes it)."""
    record = store.output(job_id, str(item.get("type") or "output"), str(item.get("subfolder") or ""),
                          str(item["filename"]))
    if record is None:
        return None  # cleaned up by retention
    return {"node_id": node_id, "name": str(item["filename"]), "type": kind,
            "content_type": record.content_type or mimetypes.guess_type(item["filename"])[0] or "",
            "size_bytes": record.size_bytes, "id": record.id, "hash": record.hash,
            "url": f"{base}{PREFIX}/assets/{record.id}/content", "url_expires_at": now_iso(URL_LIFETIME_S),
            "job_id": job_id}


def outputs(store: AssetStore, job: Job, base: str) -> list[dict[str, Any]]:
    """Every output file of the job, output nodes in the prompt's order (blocking)."""
    order = [n for n in job.output_node_ids if n in job.outputs] + [n for n in job.outputs
                                                                   if n not in job.output_node_ids]
    found = []
    for node_id in order:
        for kind, item in output_files(job.outputs.get(node_id) or {}):
            body = output_body(store, job.job_id, node_id, kind, item, base)
            if body is not None:
                found.append(body)
    return found


def progress(job: Job) -> dict[str, Any]:
    """Finished (done or cached) nodes over all nodes; the poll path knows no sampler step."""
    total = len(job.nodes)
    done = sum(1 for node in job.nodes if node.state in (NodeState.DONE, NodeState.CACHED))
    running = [node for node in job.nodes if node.state == NodeState.RUNNING]
    if job.status == JobStatus.COMPLETED:
        done = total
    body: dict[str, Any] = {"value": round(done / total, 6) if total else (1.0 if job.is_finished else 0.0),
                            "nodes_done": done, "nodes_total": total}
    if running and not job.is_finished:
        body |= {"current_node": running[0].node_id, "current_node_class": running[0].class_type,
                 "message": f"{running[0].class_type} ({done}/{total} nodes done)"}
    return body


def error(job: Job) -> dict[str, Any] | None:
    if job.error is None:
        return None
    return {"code": job.error.type or "node_execution_error", "message": job.error.message or "the job failed",
            "node_id": job.error.node_id or None, "class_type": job.error.node_type or None,
            "traceback": job.error.details or None}


def metadata(job: Job) -> dict[str, str] | None:
    labels = job.extra_data.get(METADATA_KEY)
    return {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else None


def metrics(job: Job) -> dict[str, int | None]:
    queue_ms = round(((job.started or job.finished or job.created) - job.created) * 1000) if job.created else None
    run_ms = round((job.finished - job.started) * 1000) if job.started and job.finished else None
    return {"queue_ms": max(queue_ms, 0) if queue_ms is not None else None, "execution_ms": run_ms}


def job_body(job: Job, found_outputs: list[dict[str, Any]], queue_position: int | None, output_max_age_s: float,
             status: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": job.job_id, "status": status or v2_status(job), "created_at": iso(job.created) or now_iso(),
        "started_at": iso(job.started), "completed_at": iso(job.finished),
        "expires_at": expires_at(job.created, output_max_age_s), "queue_position": queue_position,
        "progress": progress(job), "outputs": found_outputs, "error": error(job), "metrics": metrics(job),
        "urls": urls(job.job_id)}
    labels = metadata(job)
    if labels is not None:
        body["metadata"] = labels
    return body


def summary(job: Job) -> dict[str, Any]:
    """A listed job: the lighter shape (no outputs); GET the job for the rest."""
    created = iso(job.created) or now_iso()
    body: dict[str, Any] = {"id": job.job_id, "status": v2_status(job), "create_time": created,
                            "update_time": iso(job.finished or job.started) or created, "urls": urls(job.job_id)}
    labels = metadata(job)
    if labels is not None:
        body["metadata"] = labels
    return body
