"""Pydantic models of every /v1 request and response body."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, field_validator

from comfymesh.contracts.job_options import MAX_JOB_ID_LENGTH, MAX_TIMEOUT_S, STORED_KEY
from comfymesh.outbound import MAX_URL_LENGTH, OutboundRefused, parse_url


class WorkflowSubmission(BaseModel):
    """A ComfyUI API-format prompt plus options. A bare prompt object is accepted too."""

    prompt: dict[str, Any] = Field(description="API-format graph: {node_id: {class_type, inputs}}")
    extra_data: dict[str, Any] = Field(default_factory=dict, description="ComfyUI extra_data (extra_pnginfo, ...)")
    client_id: str = Field("", description="ComfyUI websocket client that receives this job's messages")
    job_id: str = Field("", max_length=MAX_JOB_ID_LENGTH,
                        description="optional caller-chosen id; resubmitting it returns the same job")
    priority: float | None = Field(None, allow_inf_nan=False, description="smaller runs first (ComfyUI's `number`)")
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
    number: float
    node_errors: dict[str, Any] = Field(default_factory=dict)
    status_url: str
    events_url: str
    existing: bool = False


class ErrorDetail(BaseModel):
    type: str
    message: str
    details: str = ""
    extra_info: dict[str, Any] = Field(default_factory=dict)


class ValidationFailure(BaseModel):
    """ComfyUI's error format: a top-level error and every node's errors at once."""

    error: ErrorDetail
    node_errors: dict[str, Any] = Field(default_factory=dict)


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


class Problem(BaseModel):
    detail: str


class Health(BaseModel):
    status: str
