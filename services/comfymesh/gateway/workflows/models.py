"""Request and response bodies of the saved-workflow routes (`/v1/workflows/{name}`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from comfymesh.contracts.job_options import MAX_TIMEOUT_S
from comfymesh.gateway.models import JobFailure
from comfymesh.gateway.workflows.declaration import INPUT_NAME_PATTERN, KINDS
from comfymesh.gateway.workflows.outputs import OutputFormat
from comfymesh.outbound import MAX_URL_LENGTH

# an imaging workflow that runs on any mesh: invert the image given as `image`
REGISTRATION_EXAMPLE: dict[str, Any] = {
    "description": "Invert an image",
    "workflow": {"1": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
                 "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
                 "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "inverted"}}},
    "inputs": [{"name": "image", "node_id": "1", "input": "image"},
               {"name": "prefix", "node_id": "3", "input": "filename_prefix"}],
}


class InputDeclaration(BaseModel):
    model_config = ConfigDict(extra="forbid")

    node_id: str = Field(max_length=128, description="the node whose literal input this is")
    input: str = Field(max_length=128, description="the node's input name, as /object_info declares it")
    name: str | None = Field(None, pattern=INPUT_NAME_PATTERN, description="its name in run requests "
                                                                           "(default: the input's name)")
    default: Any = Field(None, description="default value (default: the workflow's value)")
    description: str = Field("", max_length=1000)


class WorkflowRegistration(BaseModel):
    """A workflow in API format (or the UI format the frontend saves) and the inputs a run may set."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [REGISTRATION_EXAMPLE]})

    workflow: dict[str, Any] = Field(description="API format {node_id: {class_type, inputs}}, or the UI format")
    inputs: list[InputDeclaration] = Field(default_factory=list, max_length=100)
    description: str = Field("", max_length=2000)


class PublicInputView(BaseModel):
    name: str
    node_id: str
    input: str
    kind: str = Field(description=", ".join(KINDS))
    class_type: str
    default: Any = None
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    choices: list[Any] = Field(default_factory=list)
    description: str = ""


class SavedWorkflowView(BaseModel):
    name: str
    description: str
    inputs: list[PublicInputView]
    workflow: dict[str, Any] = Field(description="the API-format workflow a run starts from")
    run_url: str = Field(description="absolute URL of this workflow's run endpoint")
    example: dict[str, Any] = Field(description="a run request body with every input at its default")


class SavedWorkflowList(BaseModel):
    items: list[SavedWorkflowView]
    total: int
    next: str | None = Field(None, description="always null: every saved workflow is on one page")


class OutputOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: OutputFormat = Field(OutputFormat.PNG, description="png (as saved, with its metadata), webp or jpeg")
    quality: int = Field(90, ge=1, le=100, description="webp/jpeg quality")
    destination: str | None = Field(None, max_length=1024,
                                    description="fsspec folder URL to write the images under; it must lie under "
                                                "a prefix of COMFYMESH_OUTPUT_DESTINATIONS (server credentials)")


class RunRequest(BaseModel):
    """A run of a saved workflow: input values (see the workflow's own endpoint for their schema) and options."""

    model_config = ConfigDict(extra="forbid")

    inputs: dict[str, Any] = Field(default_factory=dict)
    output: OutputOptions = Field(default_factory=OutputOptions)
    wait_s: float = Field(0.0, ge=0, le=3600, allow_inf_nan=False,
                          description="wait up to this long (capped by COMFYMESH_SYNC_WAIT_MAX_S) and answer 200 "
                                      "with the images; a job still running then is answered 202")
    images_as: Literal["url", "base64"] = Field("url", description="finished images as absolute URLs or inline")
    timeout_s: float = Field(0.0, ge=0, le=MAX_TIMEOUT_S, allow_inf_nan=False,
                             description="the job's overall timeout in seconds (0: the configured default)")
    webhook_url: str = Field("", max_length=MAX_URL_LENGTH, pattern=r"^(https?://.*)?$",
                             description="signed POST when the job ends, carrying its output URLs")


class RunImage(BaseModel):
    index: int
    filename: str = Field(description="the file's name in this format")
    media_type: str
    url: str = Field(description="absolute URL of the image in the requested format")
    base64: str | None = Field(None, description="the image, when images_as is base64")
    destination: str | None = Field(None, description="where it was written, when a destination was given")


class RunResult(BaseModel):
    job_id: str
    status: str
    status_url: str
    events_url: str
    images: list[RunImage] = Field(default_factory=list, description="set once the job completed")
    error: JobFailure | None = None
