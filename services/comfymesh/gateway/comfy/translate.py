"""Our job events → ComfyUI websocket messages, in ComfyUI's order (reference §4.3, §4.4).

Pure: the hub feeds events in log order, with the queue length, and sends what comes back. Events carry
what the frames need (client id on `queued`/`started`, class types, the cached nodes' UI results on
`cached`), so no job is read back.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

from comfymesh.contracts.events import EventType, JobEvent, JobStatus

# binary frame event types (§4.5)
PREVIEW_IMAGE = 1
PREVIEW_IMAGE_WITH_METADATA = 4
_IMAGE_FORMATS = {"JPEG": (1, "image/jpeg"), "JPG": (1, "image/jpeg"), "PNG": (2, "image/png")}

Target = Literal["sid", "all", "sid_or_all"]


class ProgressState(StrEnum):
    """A node's state in ComfyUI's `progress_state` message: its vocabulary, not ours."""

    RUNNING = "running"
    FINISHED = "finished"


@dataclass
class Outgoing:
    """One frame to send. `sid_or_all`: to the prompt's client, or everyone when it has none (§4.3 ‡)."""

    target: Target
    message: dict[str, Any] | None = None
    preview: tuple[str, str, bytes] | None = None  # (node id, format name, image bytes)


@dataclass
class JobState:
    """What ComfyUI's executor would know about one running prompt."""

    prompt_id: str
    client_id: str
    class_types: dict[str, str] = field(default_factory=dict)
    executed: list[str] = field(default_factory=list)
    progress: dict[str, dict[str, Any]] = field(default_factory=dict)
    current_node: str | None = None
    started: bool = False
    cached_sent: bool = False


def _ms(ts: float) -> int:
    return int(ts * 1000)


def status_message(queue_remaining: int, sid: str | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {"status": {"exec_info": {"queue_remaining": queue_remaining}}}
    if sid is not None:
        data["sid"] = sid
    return {"type": "status", "data": data}


def _progress_state(job: JobState) -> Outgoing:
    nodes = {node_id: {**entry, "node_id": node_id, "prompt_id": job.prompt_id, "display_node_id": node_id,
                       "parent_node_id": None, "real_node_id": node_id}
             for node_id, entry in job.progress.items()}
    return Outgoing("sid_or_all", {"type": "progress_state", "data": {"prompt_id": job.prompt_id, "nodes": nodes}})


def _sid(type_: str, data: dict[str, Any]) -> Outgoing:
    return Outgoing("sid", {"type": type_, "data": data})


def _cached(job: JobState, nodes: list[str], ts: float) -> Outgoing:
    job.cached_sent = True
    return _sid("execution_cached", {"nodes": nodes, "prompt_id": job.prompt_id, "timestamp": _ms(ts)})


def _finish(job: JobState, queue_remaining: int) -> list[Outgoing]:
    return [Outgoing("all", status_message(queue_remaining)),
            _sid("executing", {"node": None, "prompt_id": job.prompt_id})]


def translate(event: JobEvent, job: JobState, *, queue_remaining: int) -> list[Outgoing]:
    """The ComfyUI frames for one event."""
    out: list[Outgoing] = []
    kind, data, node = event.type, event.data, event.node_id
    prompt_id = job.prompt_id
    # ComfyUI always sends execution_cached right after execution_start; ours only exists when
    # something was cached, so an empty one goes out before whatever follows the start instead.
    if job.started and not job.cached_sent and kind not in (EventType.CACHED, EventType.STARTED):
        out.append(_cached(job, [], event.ts))

    if kind in (EventType.QUEUED, EventType.REQUEUED):
        out.append(Outgoing("all", status_message(queue_remaining)))
    elif kind == EventType.STARTED:
        job.started = True
        out.append(Outgoing("all", status_message(queue_remaining)))
        out.append(_sid("execution_start", {"prompt_id": prompt_id, "timestamp": _ms(event.ts)}))
    elif kind == EventType.CACHED:
        nodes = [str(n) for n in data.get("nodes", [])]
        out.append(_cached(job, nodes, event.ts))
        cached_ui = data.get("ui") or {}
        for node_id in nodes:
            ui = cached_ui.get(node_id)
            if ui:  # a cached output node replays its UI result, without `executing`
                out.append(_sid("executed", {"node": node_id, "display_node": node_id, "output": ui,
                                             "prompt_id": prompt_id}))
                job.progress[node_id] = {"value": 1, "max": 1, "state": ProgressState.FINISHED}
                out.append(_progress_state(job))
    elif kind == EventType.NODE_RUNNING:
        job.current_node = node
        job.class_types[node] = str(data.get("class_type", ""))
        job.progress[node] = {"value": 0, "max": 1, "state": ProgressState.RUNNING}
        out.append(_progress_state(job))
        out.append(_sid("executing", {"node": node, "display_node": node, "prompt_id": prompt_id}))
    elif kind == EventType.NODE_PROGRESS:
        value, maximum = data.get("value", 0), data.get("max", 1)
        job.progress[node] = {"value": value, "max": maximum, "state": ProgressState.RUNNING}
        out.append(_progress_state(job))
        out.append(Outgoing("sid_or_all", {"type": "progress", "data": {
            "value": value, "max": maximum, "prompt_id": prompt_id, "node": node}}))
    elif kind == EventType.NODE_PREVIEW:
        out.append(Outgoing("sid_or_all", preview=(node, str(data.get("format", "JPEG")),
                                                   bytes.fromhex(str(data.get("data", ""))))))
    elif kind == EventType.NODE_DONE:
        job.executed.append(node)
        output = data.get("output")
        if output:
            out.append(_sid("executed", {"node": node, "display_node": node, "output": output,
                                         "prompt_id": prompt_id}))
        entry = job.progress.get(node, {"max": 1})
        job.progress[node] = {"value": entry.get("max", 1), "max": entry.get("max", 1), "state": ProgressState.FINISHED}
        out.append(_progress_state(job))
    elif kind == EventType.COMPLETED:
        out.append(_sid("execution_success", {"prompt_id": prompt_id, "timestamp": _ms(event.ts)}))
        out += _finish(job, queue_remaining)
    elif kind == EventType.FAILED:
        failed_node = str(data.get("node_id") or job.current_node or "")
        out.append(_sid("execution_error", {
            "prompt_id": prompt_id, "node_id": failed_node,
            "node_type": str(data.get("node_type") or job.class_types.get(failed_node, "")),
            "executed": list(job.executed), "exception_message": str(data.get("message", "")),
            "exception_type": str(data.get("type", "")), "traceback": [], "current_inputs": {},
            "current_outputs": [], "timestamp": _ms(event.ts)}))
        out += _finish(job, queue_remaining)
    elif kind == EventType.CANCELLED:
        if data.get("while") == JobStatus.QUEUED or not job.started:
            out.append(Outgoing("all", status_message(queue_remaining)))
        else:
            stopped = job.current_node or ""
            out.append(Outgoing("sid_or_all", {"type": "execution_interrupted", "data": {
                "prompt_id": prompt_id, "node_id": stopped, "node_type": job.class_types.get(stopped, ""),
                "executed": list(job.executed), "timestamp": _ms(event.ts)}}))
            out += _finish(job, queue_remaining)
    return out


def preview_frame(node_id: str, prompt_id: str, image_format: str, image: bytes, with_metadata: bool) -> bytes:
    """A binary preview frame: type 4 with metadata for clients that asked for it, else type 1 (§4.5)."""
    code, mime = _IMAGE_FORMATS.get(image_format.upper(), (1, "image/jpeg"))
    if not with_metadata:
        return struct.pack(">II", PREVIEW_IMAGE, code) + image
    metadata = json.dumps({"node_id": node_id, "prompt_id": prompt_id, "display_node_id": node_id,
                           "parent_node_id": None, "real_node_id": node_id, "image_type": mime}).encode()
    return struct.pack(">II", PREVIEW_IMAGE_WITH_METADATA, len(metadata)) + metadata + image

