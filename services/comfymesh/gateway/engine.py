"""The gateway's seam to the engine: the `Engine` protocol and the domain objects it answers with.

Routers and services see these dataclasses only; `client.OrchestratorClient` (gRPC) is the one module that
knows the wire format. Events are `comfymesh.contracts.events.JobEvent`, as every service passes them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from comfymesh.contracts.comfy_errors import error_body
from comfymesh.contracts.events import FINISHED_STATUSES, JobEvent, JobStatus
from comfymesh.contracts.job_order import JobOrder


class QueueFull(Exception):
    """The orchestrator refused a submit: its queue is at the configured limit (HTTP 429)."""


class PromptTooLarge(Exception):
    """A submit larger than the control plane's message limit (HTTP 413); the orchestrator never saw it."""


class OrchestratorUnavailable(Exception):
    """The orchestrator cannot be reached; the gateway answers 503 and the client retries."""


@dataclass(frozen=True)
class StageReadiness:
    stage: str
    replicas: int  # configured
    healthy: int   # answering their gRPC health check


@dataclass(frozen=True)
class Readiness:
    """Whether the orchestrator answers and every configured stage has a healthy replica."""

    orchestrator: bool
    stages: tuple[StageReadiness, ...] = ()

    @property
    def missing(self) -> list[str]:
        """The configured stages with no healthy replica: the jobs that need them would wait."""
        return [s.stage for s in self.stages if s.healthy == 0]

    @property
    def ready(self) -> bool:
        return self.orchestrator and not self.missing


@dataclass(frozen=True)
class NodeInfo:
    node_id: str
    class_type: str
    state: str
    ui: dict[str, Any] | None = None


@dataclass(frozen=True)
class Failure:
    type: str
    node_id: str
    message: str
    node_type: str = ""
    details: str = ""
    non_retryable: bool = True


@dataclass(frozen=True)
class Job:
    """A job as the orchestrator keeps it. A listed job has no `nodes` (read one job for them)."""

    job_id: str
    status: str
    number: float = 0.0
    created: float = 0.0
    started: float | None = None
    finished: float | None = None
    client_id: str = ""
    prompt: dict[str, Any] = field(default_factory=dict)
    extra_data: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    output_node_ids: list[str] = field(default_factory=list)
    nodes: list[NodeInfo] = field(default_factory=list)
    error: Failure | None = None

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED_STATUSES

    def images(self) -> list[dict[str, Any]]:
        """Every output image, output nodes in the prompt's output order first."""
        order = self.output_node_ids
        ordered = [n for n in order if n in self.outputs] + [n for n in self.outputs if n not in order]
        return [image for node_id in ordered for image in (self.outputs[node_id] or {}).get("images", [])]

    def nodes_in(self, state: str) -> list[str]:
        return [node.node_id for node in self.nodes if node.state == state]


@dataclass(frozen=True)
class JobQuery:
    """Which jobs to list, and which page of them: the orchestrator filters, orders and pages."""

    statuses: Sequence[str] = ()   # empty: every status
    order: JobOrder = JobOrder.QUEUE
    offset: int = 0
    limit: int | None = None       # None: to the end
    workflow_id: str | None = None
    after: tuple[float, str] | None = None  # NEWEST only: (created, job id) of the job the page starts past


@dataclass(frozen=True)
class JobPage:
    jobs: list[Job]
    total: int   # jobs matching the query, on every page
    offset: int

    @property
    def has_more(self) -> bool:
        return self.offset + len(self.jobs) < self.total


@dataclass(frozen=True)
class NewJob:
    """A workflow to queue, with its options (the orchestrator checks them again)."""

    prompt: Any
    extra_data: dict[str, Any] = field(default_factory=dict)
    client_id: str = ""
    job_id: str = ""               # ComfyUI's caller-chosen prompt_id; /v1 leaves it to the orchestrator
    idempotency_key: str = ""      # kept per user beside the job it made, never as its id
    request_digest: str = ""       # of the body the key came with: another body under the key is a conflict
    priority: float | None = None
    front: bool = False
    targets: list[str] | None = None
    timeout_s: float = 0.0
    webhook_url: str = ""
    user: str = ""


@dataclass(frozen=True)
class Submission:
    """The orchestrator's answer to a submit: accepted (with a job id), or refused with ComfyUI's errors."""

    job_id: str
    number: float
    accepted: bool
    error: dict[str, Any] | None
    node_errors: dict[str, Any]
    existing: bool = False
    conflict: bool = False  # the idempotency key was used with another body: nothing was queued

    def refusal(self) -> dict[str, Any]:
        """ComfyUI's body for a refused prompt."""
        error = self.error or {}
        return error_body(str(error.get("type", "")), str(error.get("message", "")), str(error.get("details", "")),
                          error.get("extra_info"), self.node_errors)


@dataclass(frozen=True)
class ModelFile:
    name: str          # relative to its folder, '/' separators
    size: int
    modified: float
    created: float
    digest: str = ""   # sha256, when asked for


@dataclass(frozen=True)
class Device:
    name: str
    type: str
    index: int
    vram_total: int
    vram_free: int
    torch_vram_total: int
    torch_vram_free: int


@dataclass(frozen=True)
class ReplicaState:
    """A stage replica as the orchestrator that answered sees it."""

    stage: str
    address: str
    healthy: bool
    slots: int
    in_flight: int
    device: str = ""
    models: tuple[str, ...] = ()
    device_total_bytes: int = 0
    device_free_bytes: int = 0
    memory_budget_bytes: int = 0
    memory_used_bytes: int = 0
    failures: int = 0


@dataclass(frozen=True)
class JobProgress:
    """A job the answering orchestrator drives: the node running now and its last progress."""

    job_id: str
    node_id: str = ""
    class_type: str = ""
    value: int = 0
    max: int = 0
    nodes_done: int = 0
    nodes_total: int = 0


@dataclass(frozen=True)
class OrchestratorState:
    address: str  # where the gateway asked it
    healthy: bool  # it answered (the rest is empty when it did not)
    name: str = ""
    max_running_jobs: int = 0
    waiting_calls: int = 0
    replicas: tuple[ReplicaState, ...] = ()
    running: tuple[JobProgress, ...] = ()


class Engine(Protocol):
    """What the gateway asks of the orchestrator. Every call may raise OrchestratorUnavailable."""

    async def close(self) -> None: ...

    async def readiness(self) -> Readiness: ...

    async def submit(self, job: NewJob) -> Submission:
        """Queue a job; raises QueueFull or PromptTooLarge."""
        ...

    async def get_job(self, job_id: str, status_only: bool = False) -> Job | None:
        """The job with its nodes (None if there is none); `status_only`: only its id and status, cheaply."""
        ...

    async def list_jobs(self, query: JobQuery) -> JobPage: ...

    async def count_jobs(self, statuses: Sequence[JobStatus]) -> int: ...

    async def cancel(self, job_id: str = "") -> list[str]:
        """Cancel a job ("": every running one); the ids cancelled."""
        ...

    async def delete_jobs(self, job_ids: Sequence[str], all_finished: bool = False, all_queued: bool = False) -> int:
        """Delete these jobs, and every finished or queued one if asked (cancelling them first); how many went."""
        ...

    async def model_files(self, folder: str, digests: bool = False) -> list[ModelFile]:
        """A model folder's files, as validation accepts them."""
        ...

    async def object_info(self) -> dict[str, Any]: ...

    async def devices(self) -> list[Device]: ...

    async def free(self, unload_models: bool = True, free_memory: bool = False) -> list[str]: ...

    async def cluster(self) -> tuple[OrchestratorState, ...]:
        """Each orchestrator (every address of a `dns:///` name; else the one configured): its replicas and the
        progress of the jobs it drives."""
        ...

    def events(self, job_id: str = "", after: int = 0, follow: bool = True,
               previews: bool = False) -> AsyncIterator[JobEvent]:
        """Events after id `after` (-1: from now on) of one job, or of every job; previews have id 0."""
        ...
