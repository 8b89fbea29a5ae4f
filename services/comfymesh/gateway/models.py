"""Pydantic models of every /v1 request and response body."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from comfymesh.contracts.job_options import MAX_TIMEOUT_S, STORED_KEY
from comfymesh.outbound import MAX_URL_LENGTH, OutboundRefused, parse_url

# a body's example in the OpenAPI document: an imaging graph that runs on any mesh
SUBMISSION_EXAMPLE: dict[str, Any] = {
    "prompt": {"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1,
                                                             "color": 0}},
               "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "example"}}},
    "timeout_s": 60,
}


class WorkflowSubmission(BaseModel):
    """A ComfyUI API-format prompt plus options. A bare prompt object (no `prompt` key) is accepted too.
    Unknown fields are refused (422). Send `Idempotency-Key` to make a resubmit return the same job."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [SUBMISSION_EXAMPLE]})

    prompt: dict[str, Any] = Field(description="API-format graph: {node_id: {class_type, inputs}}")
    extra_data: dict[str, Any] = Field(default_factory=dict, description="ComfyUI extra_data (extra_pnginfo, ...)")
    client_id: str = Field("", description="ComfyUI websocket client that receives this job's messages")
    priority: int | None = Field(None, description="smaller runs first (ComfyUI's `number`)")
    front: bool = Field(False, description="queue before every waiting job")
    timeout_s: float = Field(0.0, ge=0, le=MAX_TIMEOUT_S, allow_inf_nan=False,
                             description="this job's overall timeout in seconds (0: the configured default)")
    webhook_url: str = Field("", max_length=MAX_URL_LENGTH, pattern=r"^(https?://.*)?$",
                             description="http(s) URL POSTed (signed) when the job completes, fails or is cancelled; "
                                         "loopback, private and link-local addresses are refused unless "
                                         "COMFYMESH_OUTBOUND_ALLOW names them")

    @field_validator("webhook_url")
    @classmethod
    def _webhook_url(cls, value: str) -> str:
        if value:
            try:
                parse_url(value)
            except OutboundRefused as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("extra_data")
    @classmethod
    def _no_options_in_extra_data(cls, value: dict[str, Any]) -> dict[str, Any]:
        if STORED_KEY in value:
            raise ValueError(f"extra_data.{STORED_KEY} is reserved: set timeout_s and webhook_url in this body")
        return value


class WorkflowAccepted(BaseModel):
    job_id: str
    number: int | float = Field(description="the job's place in the queue (ComfyUI's `number`)")
    node_errors: dict[str, Any] = Field(default_factory=dict)
    status_url: str = Field(description="absolute URL of the job")
    events_url: str = Field(description="absolute URL of the job's event stream")
    existing: bool = Field(False, description="an Idempotency-Key seen before: this is the job it made")


class NodeStateModel(BaseModel):
    node_id: str
    class_type: str
    state: str = Field(description="pending, running, cached, done or failed")


class JobFailure(BaseModel):
    type: str
    node_id: str
    node_type: str = ""
    message: str
    details: str = ""
    non_retryable: bool = True


class OutputImage(BaseModel):
    filename: str
    subfolder: str
    type: str
    url: str


class JobView(BaseModel):
    job_id: str
    status: str = Field(description="queued, running, completed, failed or cancelled")
    number: int | float = Field(description="the job's place in the queue (ComfyUI's `number`)")
    created: float
    started: float | None = None
    finished: float | None = None
    nodes: list[NodeStateModel]
    outputs: dict[str, Any] = Field(description="UI results of output nodes, as ComfyUI's history gives them")
    images: list[OutputImage] = Field(description="every output image, in output-node order")
    error: JobFailure | None = None


class CheckpointModel(BaseModel):
    name: str
    size: int
    digest: str = Field(description="sha256 of the file")


class CheckpointList(BaseModel):
    checkpoints: list[CheckpointModel]


class JobList(BaseModel):
    """A page of jobs, newest first: pass `next` as `cursor` for the following page."""

    items: list[JobView]
    total: int = Field(description="how many jobs match the filters, on every page")
    next: str | None = Field(description="the cursor of the following page; null on the last page")


class FieldError(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class Problem(BaseModel):
    """An RFC 9457 problem: every /v1 error (media type application/problem+json)."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="urn:comfymesh:problem:<code>")
    title: str
    status: int
    detail: str
    instance: str = Field(description="the path that was asked for")
    code: str = Field(description="the short name of `type`")
    errors: list[FieldError] | None = Field(None, description="each invalid field (code invalid_request)")
    node_errors: dict[str, Any] | None = Field(None, description="each node's errors as ComfyUI gives them "
                                                                 "(code invalid_prompt)")


class SseEvent(BaseModel):
    """The `data:` of a server-sent event (its `event:` field is the type; see the event catalog)."""

    model_config = ConfigDict(extra="allow")

    job_id: str
    node_id: str = Field(description="the node the event is about; empty for job events")
    ts: float = Field(description="when it was recorded (Unix seconds)")


class Health(BaseModel):
    status: str


class StageHealth(BaseModel):
    replicas: int = Field(description="replicas configured")
    healthy: int = Field(description="of them, those answering their gRPC health check")


class ReadinessReport(BaseModel):
    status: str = Field(description="`ready`; else what is missing: `orchestrator unavailable`, or the stages")
    missing: list[str] = Field(default_factory=list, description="configured stages with no healthy replica")
    stages: dict[str, StageHealth] = Field(default_factory=dict, description="every configured stage")


class ReplicaModel(BaseModel):
    stage: str
    address: str
    healthy: bool = Field(description="its gRPC health check answered SERVING")
    slots: int = Field(description="calls it runs at once")
    in_flight: int = Field(description="slots in use by the answering orchestrator's calls")
    device: str = Field(description="e.g. `cpu`, `cuda:0 NVIDIA H100`")
    models: list[str] = Field(description="model files its cache holds")
    device_total_bytes: int = Field(description="its device's memory (0: a replica that runs no models)")
    device_free_bytes: int
    memory_budget_bytes: int = Field(description="its model cache's budget")
    memory_used_bytes: int = Field(description="what the loaded models take of the budget")
    failures: int = Field(description="failed calls in a row (it is backed off while > 0)")


class OrchestratorModel(BaseModel):
    address: str = Field(description="where the gateway asked it (each address of a `dns:///` name)")
    healthy: bool = Field(description="it answered; when not, the fields below are empty")
    name: str = Field(description="host:pid of the orchestrator")
    max_running_jobs: int
    waiting_calls: int = Field(description="its stage calls waiting for a free slot")
    replicas: list[ReplicaModel]


class RunningJobModel(BaseModel):
    job_id: str
    started: float | None
    orchestrator: str | None = Field(description="the orchestrator driving it; null when it did not answer "
                                                 "(no progress is shown then)")
    node_id: str = Field(description="the node running now")
    class_type: str
    value: int = Field(description="the node's progress (sampler steps); 0 of 0 when it reported none")
    max: int
    nodes_done: int
    nodes_total: int = Field(description="nodes the job runs (cached ones left out); 0 when unknown")


class RecentFailure(BaseModel):
    job_id: str
    finished: float | None
    node_id: str = Field(description="the node that failed; empty when the job failed before any node ran")
    node_type: str
    type: str
    message: str


class ClusterView(BaseModel):
    """The running cluster as operators watch it (the /ui/cluster page and `comfymesh status` read this)."""

    queued: int = Field(description="jobs waiting in the queue, store-wide")
    running: list[RunningJobModel] = Field(description="running jobs, store-wide, in run order")
    orchestrators: list[OrchestratorModel] = Field(description="each orchestrator (every address of a `dns:///` "
                                                               "name), with every stage replica it knows")
    failures: list[RecentFailure] = Field(description="the most recent failed jobs, newest first")
