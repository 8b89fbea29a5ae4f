"""Comfy API v2's event stream of one job (SSE): `status`, `progress`, `preview`, `output`, `log`.

Each frame is a complete snapshot of its kind, so a client that drops or reconnects loses nothing: on connect the
stream sends the job's status and progress (a finished job: its outputs and final status, then it ends); then the
job's event log, from its start, moves the snapshot forward: a frame goes out only when what it shows advanced,
so replaying what the snapshot already holds sends nothing twice. The final `status` ends the stream.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request
from sse_starlette.sse import EventSourceResponse, ServerSentEvent

from comfymesh.contracts.events import EventType, JobEvent, NodeState
from comfymesh.gateway.engine import Job
from comfymesh.gateway.request_io import jobs_of
from comfymesh.gateway.v2 import views
from comfymesh.gateway.v2.asset_store import AssetStore
from comfymesh.gateway.v2.context import queue_position, store_of
from comfymesh.gateway.v2.errors import V2Error
from comfymesh.gateway.v2.schemas import ErrorEnvelope
from comfymesh.gateway.v2.views import V2Status

router = APIRouter(tags=["jobs"])
_RANK: dict[str, int] = {V2Status.QUEUED: 0, V2Status.RUNNING: 1}  # a terminal status ranks 2
_FINAL = {EventType.COMPLETED: V2Status.SUCCEEDED, EventType.FAILED: V2Status.FAILED,
          EventType.CANCELLED: V2Status.CANCELED}
EVENT_CATALOG = """Server-sent events, each `data` a JSON object:

- `status`: `{status, queue_position}`; the last one carries a terminal status and ends the stream
- `progress`: `{value, nodes_done, nodes_total, current_node, current_node_class, step, steps, message}`
- `preview`: `{node_id, content_type, data_base64}`: a sampler's intermediate image (live only)
- `output`: an `Output` (as in the job's `outputs`), as each is written
- `log`: `{level, message}`: retries, and the error of a failed job

Comments (`: ping`) keep the connection open. There is no replay cursor: reconnect, or poll the job."""


def frame(event: str, data: dict[str, Any]) -> ServerSentEvent:
    return ServerSentEvent(data=json.dumps(data), event=event)


@dataclass
class Relay:
    """One stream's view of the job, moved forward by its events."""

    job_id: str
    store: AssetStore
    base: str
    status: str
    nodes_total: int
    classes: dict[str, str]
    done: set[str]
    current: str | None = None
    step: int | None = None
    steps: int | None = None
    sent_progress: tuple[Any, ...] = ()
    seen_outputs: set[str] = field(default_factory=set)

    @classmethod
    def of(cls, job: Job, store: AssetStore, base: str) -> Relay:
        running = [n.node_id for n in job.nodes if n.state == NodeState.RUNNING]
        return cls(job.job_id, store, base, views.v2_status(job), len(job.nodes),
                   {n.node_id: n.class_type for n in job.nodes},
                   {n.node_id for n in job.nodes if n.state in (NodeState.DONE, NodeState.CACHED)},
                   running[0] if running else None)

    def progress(self) -> ServerSentEvent | None:
        """A `progress` frame if the snapshot advanced since the last one sent."""
        done, total = len(self.done), self.nodes_total
        fraction = self.step / self.steps if self.current and self.step is not None and self.steps else 0.0
        value = min((done + fraction) / total, 1.0) if total else (1.0 if self.status == V2Status.SUCCEEDED else 0.0)
        key = (done, self.current, self.step)
        if self.sent_progress and (done < self.sent_progress[0] or key == self.sent_progress):
            return None  # nothing new, or an older state replayed from the log
        self.sent_progress = key
        body: dict[str, Any] = {"value": round(value, 6), "nodes_done": done, "nodes_total": total}
        if self.current:
            name = self.classes.get(self.current, "")
            body |= {"current_node": self.current, "current_node_class": name or None,
                     "step": self.step, "steps": self.steps,
                     "message": f"{name} {self.step}/{self.steps}" if self.steps else f"{name or self.current}"}
        return frame("progress", body)

    def status_frame(self, status: str, queue_position: int | None = None) -> ServerSentEvent | None:
        """A `status` frame if the job moved on (a replayed older status sends nothing)."""
        if _RANK.get(status, 2) <= _RANK.get(self.status, 2):
            return None
        self.status = status
        return frame("status", {"status": status, "queue_position": queue_position})

    async def outputs(self, node_id: str, ui: Any) -> list[ServerSentEvent]:
        """An `output` frame for each file of a node's UI result not sent yet."""
        if not isinstance(ui, dict):
            return []
        frames = []
        for kind, item in views.output_files(ui):
            body = await asyncio.to_thread(views.output_body, self.store, self.job_id, node_id, kind, item, self.base)
            if body is not None and body["id"] not in self.seen_outputs:
                self.seen_outputs.add(body["id"])
                frames.append(frame("output", body))
        return frames

    async def job_outputs(self, job: Job) -> list[ServerSentEvent]:
        frames = []
        for body in await asyncio.to_thread(views.outputs, self.store, job, self.base):
            if body["id"] not in self.seen_outputs:
                self.seen_outputs.add(body["id"])
                frames.append(frame("output", body))
        return frames

    async def on(self, event: JobEvent) -> list[ServerSentEvent]:
        """The frames one logged (or live) event makes."""
        kind, data, node = event.type, event.data, event.node_id
        frames: list[ServerSentEvent | None] = []
        if kind in (EventType.QUEUED, EventType.REQUEUED):
            frames.append(self.status_frame(V2Status.QUEUED))
        elif kind == EventType.STARTED:
            frames.append(self.status_frame(V2Status.RUNNING))
        elif kind == EventType.CACHED:
            nodes = [str(n) for n in data.get("nodes", [])]
            self.done.update(nodes)
            ui = data.get("ui") or {}
            for cached in nodes:
                frames += await self.outputs(cached, ui.get(cached) if isinstance(ui, dict) else None)
            frames.append(self.progress())
        elif kind == EventType.NODE_RUNNING and node not in self.done:
            self.current, self.step, self.steps = node, None, None
            self.classes[node] = str(data.get("class_type") or self.classes.get(node, ""))
            frames.append(self.progress())
        elif kind == EventType.NODE_PROGRESS and node not in self.done:
            self.current, self.step, self.steps = node, _int(data.get("value")), _int(data.get("max"))
            frames.append(self.progress())
        elif kind == EventType.NODE_PREVIEW:
            image = bytes.fromhex(str(data.get("data", "")))
            content_type = "image/png" if str(data.get("format", "JPEG")).upper() == "PNG" else "image/jpeg"
            frames.append(frame("preview", {"node_id": node, "content_type": content_type,
                                            "data_base64": base64.b64encode(image).decode()}))
        elif kind == EventType.NODE_DONE:
            frames += await self.outputs(node, data.get("output"))
            if node not in self.done:
                self.done.add(node)
                if self.current == node:
                    self.current, self.step, self.steps = None, None, None
                frames.append(self.progress())
        elif kind == EventType.RETRYING:
            frames.append(frame("log", {"level": "warning", "message": str(data.get("message") or
                                                                           f"node {node} is tried again")}))
        return [f for f in frames if f is not None]


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


async def _final(relay: Relay, job: Job | None, status: str, failure: str = "") -> AsyncIterator[ServerSentEvent]:
    if job is not None:
        for out in await relay.job_outputs(job):
            yield out
    if failure:
        yield frame("log", {"level": "error", "message": failure})
    relay.status = status
    yield frame("status", {"status": status, "queue_position": None})


async def stream(request: Request, job: Job, queue_position: int | None) -> AsyncIterator[ServerSentEvent]:
    jobs = jobs_of(request)
    relay = Relay.of(job, store_of(request), views.origin(request))
    if relay.status in views.TERMINAL:
        message = job.error.message if job.error is not None and relay.status == V2Status.FAILED else ""
        async for out in _final(relay, job, relay.status, message):
            yield out
        return
    yield frame("status", {"status": relay.status, "queue_position": queue_position})
    first = relay.progress()
    if first is not None:
        yield first
    async for event in jobs.follow(job.job_id, after=0, previews=True):
        if event.type in _FINAL:
            final = await jobs.job(job.job_id)
            failure = str(event.data.get("message") or "the job failed") if event.type == EventType.FAILED else ""
            async for out in _final(relay, final, _FINAL[EventType(event.type)], failure):
                yield out
            return
        for out in await relay.on(event):
            yield out


@router.get("/jobs/{job_id}/events", response_class=EventSourceResponse, summary="A job's live events (SSE)",
            description=EVENT_CATALOG,
            responses={200: {"content": {"text/event-stream": {}}, "description": "the event stream"},
                       404: {"model": ErrorEnvelope, "description": "no such job"}})
async def job_events(job_id: str, request: Request) -> Any:
    job = await jobs_of(request).job(job_id)
    if job is None:
        raise V2Error(404, "not_found", f"no job {job_id[:200]!r}")
    position = await queue_position(jobs_of(request), job)
    return EventSourceResponse(stream(request, job, position), ping=15)
