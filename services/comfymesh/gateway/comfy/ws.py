"""ComfyUI's `/ws`: sessions keyed by client id, fed from the orchestrator's event log by one hub task.

The hub follows the log from "now" and routes each prompt's messages to whichever socket currently
holds the prompt's client id, so a client that reconnects with the same `clientId` keeps receiving.
A prompt's client id comes with its `queued` and `started` events: the hub reads a job back only for a
prompt whose start went by before the hub listened (once per such prompt, never per event).
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

from comfymesh.contracts.events import TERMINAL_EVENTS, EventType, JobEvent, is_terminal
from comfymesh.gateway.comfy.features import server_features
from comfymesh.gateway.comfy.translate import JobState, Outgoing, preview_frame, status_message, translate
from comfymesh.gateway.engine import OrchestratorUnavailable
from comfymesh.gateway.jobs_service import RESUBSCRIBE_DELAY_S, JobService
from comfymesh.gateway.request_io import jobs_of

log = logging.getLogger("comfymesh.gateway")
router = APIRouter(include_in_schema=False)
# a slow socket loses frames rather than holding up every other client
_SEND_QUEUE = 1024
# the events that change the queue's length, each followed by a status frame with it
_QUEUE_CHANGES = frozenset({EventType.QUEUED, EventType.REQUEUED, EventType.STARTED}) | TERMINAL_EVENTS


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

    def __init__(self, jobs: JobService) -> None:
        self.service = jobs
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
        return await self.service.queue_remaining()

    def running_node_of(self, sid: str) -> str | None:
        for job in self.jobs.values():
            if job.client_id == sid and job.started and job.current_node:
                return job.current_node
        return None

    async def _follow(self) -> None:
        after = -1  # from now on; after a lost stream, resume where we were
        while True:
            try:
                async for event in self.service.follow(after=after, previews=True):
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
            await asyncio.sleep(RESUBSCRIBE_DELAY_S)

    async def _job(self, event: JobEvent, listening: bool) -> JobState | None:
        """The prompt's state: from its `queued` or `started` event, else (only with someone listening) read
        once from the orchestrator, for a prompt that started before this hub listened."""
        job = self.jobs.get(event.job_id)
        if job is None and "client_id" in event.data:
            job = JobState(prompt_id=event.job_id, client_id=str(event.data["client_id"]))
        elif job is None and listening:
            record = await self.service.job(event.job_id)
            job = JobState(prompt_id=event.job_id, client_id=record.client_id if record else "",
                           class_types={n.node_id: n.class_type for n in record.nodes} if record else {})
        if job is not None:
            self.jobs[event.job_id] = job
        return job

    async def _dispatch(self, event: JobEvent) -> None:
        listening = bool(self.sessions)
        if event.type == EventType.RETRYING or (event.type == EventType.NODE_PREVIEW and not listening):
            return
        job = await self._job(event, listening)
        if job is None:
            return  # nobody listens: nothing looked up on the jobs' critical path (a later client asks afresh)
        # with nobody listening the state still follows the prompt, for a client that connects during it
        remaining = await self.queue_remaining() if listening and event.type in _QUEUE_CHANGES else 0
        frames = translate(event, job, queue_remaining=remaining)
        if listening:
            for frame in frames:
                self._send(frame, job)
        if is_terminal(event.type):
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
        hub = app.state.comfy_hub = Hub(jobs_of(socket))
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
