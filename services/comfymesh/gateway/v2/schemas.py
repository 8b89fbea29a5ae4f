"""The bodies of Comfy API v2 as this gateway serves them (written from the public contract: the `comfy-api-proxy`
schemas and the `comfy-sdk` client), for validation of requests and the /api/v2 OpenAPI document."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class V2Status(StrEnum):
    """queued → running → succeeded | failed; a cancel moves running → canceling → canceled. Terminal: succeeded,
    canceled, failed, expired."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    CANCELING = "canceling"
    CANCELED = "canceled"
    FAILED = "failed"
    EXPIRED = "expired"


class ErrorBody(BaseModel):
    code: str = Field(examples=["invalid_workflow"])
    message: str
    details: dict[str, Any] | None = None


class ErrorEnvelope(BaseModel):
    """Every v2 error: `invalid_workflow`, `workflow_format_ui`, `missing_asset` (422); `idempotency_key_reuse`
    (422); `hash_mismatch` (409); `blob_not_found`, `not_found` (404); `invalid_request` (400/422);
    `queue_full`, `rate_limited` (429 + Retry-After); `unauthorized` (401); `forbidden` (403)."""

    error: ErrorBody


class JobSubmission(BaseModel):
    """POST /api/v2/jobs. Inside `workflow`, an input may be a `core/ASSET` reference to an uploaded asset:
    `{"__type": "core/ASSET", "info": {"id": "<asset id>", "hash": "blake3:...", "file_path": "x.png"}}`;
    it reaches the node as the asset's file (LoadImage's `image`)."""

    model_config = ConfigDict(extra="forbid")

    workflow: dict[str, Any] = Field(description="API-format graph: {node_id: {class_type, inputs}}")
    extra_data: dict[str, str] | None = Field(None, description="only `api_key_comfy_org` (partner nodes; unused "
                                                                "here, never stored)")
    metadata: dict[str, str] | None = Field(None, description="string labels stored on the job (at most 16 pairs; "
                                                              "keys up to 64, values up to 256 characters)")


class Progress(BaseModel):
    value: float = Field(ge=0.0, le=1.0, description="overall fraction: finished nodes, plus the running node's steps")
    nodes_done: int
    nodes_total: int
    current_node: str | None = None
    current_node_class: str | None = None
    step: int | None = None
    steps: int | None = None
    message: str | None = None


class OutputKind(StrEnum):
    IMAGE = "image"
    VIDEO = "video"
    AUDIO = "audio"
    TEXT = "text"
    FILE = "file"
    LATENT = "latent"


class Output(BaseModel):
    """A job's output file; it is an asset too (GET /api/v2/assets/{id}, its bytes at `url`)."""

    node_id: str
    name: str
    type: OutputKind
    content_type: str
    size_bytes: int
    id: str
    hash: str | None = Field(description="`blake3:<hex>`")
    url: str
    url_expires_at: str
    job_id: str | None = None


class JobError(BaseModel):
    code: str = Field(examples=["node_execution_error"])
    message: str
    node_id: str | None = None
    class_type: str | None = None
    traceback: str | None = None


class JobUrls(BaseModel):
    self: str
    events: str
    cancel: str


class Job(BaseModel):
    id: str
    status: V2Status
    created_at: str
    started_at: str | None
    completed_at: str | None
    expires_at: str
    queue_position: int | None = Field(description="1 for the next job to run; null unless queued")
    progress: Progress | None
    outputs: list[Output]
    error: JobError | None
    metrics: dict[str, int | None] | None = None
    metadata: dict[str, str] | None = None
    urls: JobUrls


class JobSummary(BaseModel):
    id: str
    status: V2Status
    create_time: str
    update_time: str
    metadata: dict[str, str] | None = None
    urls: JobUrls


class JobList(BaseModel):
    jobs: list[JobSummary]
    next_cursor: str | None = Field(None, description="pass as `cursor` for the next page; absent on the last")


class JobWorkflow(BaseModel):
    workflow: dict[str, Any]
    format: str = Field(description="`api`: the API-format graph that ran (asset references resolved)")


class Asset(BaseModel):
    id: str
    hash: str | None = Field(description="`blake3:<hex>` of the content")
    size_bytes: int
    content_type: str
    file_path: str | None = None
    created_new: bool | None = Field(None, description="on create: a new blob (true) or bytes already stored (false)")
    created_at: str
    url: str
    url_expires_at: str
    expires_at: str | None = None
    job_id: str | None = None


class FromHash(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hash: str = Field(max_length=100, description="`blake3:<hex>` of bytes already stored")
    file_path: str | None = Field(None, max_length=1024)
    tags: list[str] | None = Field(None, max_length=64)


class Health(BaseModel):
    status: str = Field(description="`healthy`, or `degraded` while the orchestrator does not answer "
                                    "or a configured stage has no healthy replica")
    orchestrator: str
