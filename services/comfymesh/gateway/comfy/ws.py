"""ComfyUI's `/ws`: sessions keyed by client id, fed from the orchestrator's event log by one hub task.

The hub follows the log from "now" and routes each prompt's messages to whichever socket currently
holds the prompt's client id, so a client that reconnects with the same `clientId` keeps receiving.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from comfymesh.gateway.client import JobEvent, OrchestratorClient, OrchestratorUnavailable
from comfymesh.gateway.comfy.features import server_features
from comfymesh.gateway.comfy.translate import TERMINAL, JobState, Outgoing, preview_frame, status_message, translate

log = logging.getLogger("comfymesh.gateway")
router = APIRouter(include_in_schema=False)
# a slow socket loses frames rather than holding up every other client
_SEND_QUEUE = 1024


@dataclass
class Session:
    sid: str
    socket: WebSocket
    flags: dict[str, Any] = field(default_factory=dict)
    outbox: asyncio.Queue[str | bytes | None] = field(default_factory=lambda: asyncio.Queue(_SEND_QUEUE))

    def send(self, frame: str | bytes) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            self.outbox.put_nowait(frame)


class Hub:
    """Every connected session, and the task that turns log events into their frames."""

    def __init__(self, client: OrchestratorClient) -> None:
        self.client = client
        self.sessions: dict[str, Session] = {}
        self.jobs: dict[str, JobState] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._follow())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def queue_remaining(self) -> int:
        reply = await self.client.list_jobs(["queued", "running"], limit=1)
        return int(reply.total)

    def running_node_of(self, sid: str) -> str | None:
        for job in self.jobs.values():
            if job.client_id == sid and job.started and job.current_node:
                return job.current_node
        return None

    async def _follow(self) -> None:
        after = -1  # from now on; after a lost stream, resume where we were
        while True:
            try:
                async for event in self.client.events(after=after, follow=True, previews=True):
                    if event.id:
                        after = event.id
                    try:
                        await self._dispatch(event)
                    except OrchestratorUnavailable:
                        raise
                    except Exception:  # one bad event must not stop every client's stream
                        log.exception("could not translate event %s of job %s", event.type, event.job_id)
            except OrchestratorUnavailable:
                pass
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("event stream broke; resubscribing")
            await asyncio.sleep(0.5)

    async def _job(self, job_id: str) -> JobState:
        job = self.jobs.get(job_id)
        if job is None:
            record = await self.client.get_job(job_id)
            client_id = record.client_id if record is not None else ""
            job = JobState(prompt_id=job_id, client_id=client_id)
            if record is not None:
                job.class_types = {n.node_id: n.class_type for n in record.nodes}
            self.jobs[job_id] = job
        return job

    async def _dispatch(self, event: JobEvent) -> None:
        if event.type == "retrying" or not self.sessions:
            return  # nobody listens: no lookups on the jobs' critical path (a later client asks afresh)
        job = await self._job(event.job_id)
        cached_ui: dict[str, Any] = {}
        if event.type == "cached":
            record = await self.client.get_job(event.job_id)
            if record is not None:
                cached_ui = {n.node_id: json.loads(n.ui_json) for n in record.nodes if n.ui_json}
        needs_count = event.type in ("queued", "requeued", "started") or event.type in TERMINAL
        remaining = await self.queue_remaining() if needs_count else 0
        for frame in translate(event, job, queue_remaining=remaining, cached_ui=cached_ui):
            self._send(frame, job)
        if event.type in TERMINAL:
            self.jobs.pop(event.job_id, None)

    def _send(self, frame: Outgoing, job: JobState) -> None:
        if frame.target == "all" or (frame.target == "sid_or_all" and not job.client_id):
            targets = list(self.sessions.values())
        else:
            session = self.sessions.get(job.client_id) if job.client_id else None
            targets = [session] if session is not None else []
        if frame.message is not None:
            text = json.dumps(frame.message)
            for session in targets:
                session.send(text)
        elif frame.preview is not None:
            node_id, image_format, image = frame.preview
            for session in targets:
                # prompts without a client id send plain previews: no client's flags apply (§4.5)
                rich = bool(job.client_id) and bool(session.flags.get("supports_preview_metadata"))
                session.send(preview_frame(node_id, job.prompt_id, image_format, image, rich))


def hub_of(socket: WebSocket) -> Hub:
    app = socket.app
    hub: Hub | None = getattr(app.state, "comfy_hub", None)
    if hub is None:
        hub = app.state.comfy_hub = Hub(app.state.client)
    hub.start()
    return hub


async def _writer(session: Session) -> None:
    while True:
        frame = await session.outbox.get()
        if frame is None:
            return
        if isinstance(frame, bytes):
            await session.socket.send_bytes(frame)
        else:
            await session.socket.send_text(frame)


@router.websocket("/ws")
@router.websocket("/api/ws")
async def comfy_socket(socket: WebSocket) -> None:
    hub = hub_of(socket)
    sid = socket.query_params.get("clientId") or uuid.uuid4().hex
    await socket.accept()
    previous = hub.sessions.get(sid)
    session = Session(sid, socket)
    hub.sessions[sid] = session  # a reconnect with the same id takes over the old socket's messages
    if previous is not None:
        with contextlib.suppress(Exception):
            await previous.socket.close()
    session.send(json.dumps(status_message(await hub.queue_remaining(), sid=sid)))
    running = hub.running_node_of(sid)
    if running is not None:
        session.send(json.dumps({"type": "executing", "data": {"node": running}}))
    writer = asyncio.create_task(_writer(session))
    first = True
    try:
        while True:
            received = await socket.receive()
            if received["type"] == "websocket.disconnect":
                break
            if first and received.get("text"):
                first = False
                _answer_flags(session, received["text"], socket)
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        if hub.sessions.get(sid) is session:
            del hub.sessions[sid]
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await writer


def _answer_flags(session: Session, text: str, socket: WebSocket) -> None:
    """ComfyUI answers `feature_flags` only when it is the client's very first message (§4.2)."""
    try:
        message = json.loads(text)
    except ValueError:
        return
    if isinstance(message, dict) and message.get("type") == "feature_flags" \
            and isinstance(message.get("data"), dict):
        session.flags = message["data"]
        session.send(json.dumps({"type": "feature_flags", "data": server_features(socket.app.state.settings)}))
