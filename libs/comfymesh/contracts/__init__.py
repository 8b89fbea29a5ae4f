"""What services say to each other, defined once: job and event vocabulary, errors and failures, node values
and model handles, ComfyUI's error body and the wire JSON codec. Every service imports it; it imports
nothing of theirs."""

from comfymesh.contracts import wirejson
from comfymesh.contracts.comfy_errors import error_body, error_detail, error_response
from comfymesh.contracts.errors import (
    ComfymeshError,
    InterruptedError_,
    ModelError,
    ModelTooLargeError,
    NodeInputError,
    ResourceExhaustedError,
    StageRequestError,
    StageUnavailableError,
    TimeoutExceededError,
)
from comfymesh.contracts.events import (
    FINISHED_STATUSES,
    TERMINAL_EVENTS,
    EventType,
    JobEvent,
    JobStatus,
    NodeState,
    is_terminal,
)
from comfymesh.contracts.failures import (
    exception_from_failure,
    failure_from_dict,
    failure_from_exception,
    failure_record,
    failure_to_dict,
)
from comfymesh.contracts.handles import (
    HandleKind,
    ModelHandle,
    checkpoint_handle,
    checkpoint_named,
    is_handle,
    vae_file_handle,
)
from comfymesh.contracts.values import TENSOR_TYPES, TensorRef, tensor_of, value_from_dict, value_to_dict

__all__ = [
    "FINISHED_STATUSES",
    "TENSOR_TYPES",
    "TERMINAL_EVENTS",
    "ComfymeshError",
    "EventType",
    "HandleKind",
    "InterruptedError_",
    "JobEvent",
    "JobStatus",
    "ModelError",
    "ModelHandle",
    "ModelTooLargeError",
    "NodeInputError",
    "NodeState",
    "ResourceExhaustedError",
    "StageRequestError",
    "StageUnavailableError",
    "TensorRef",
    "TimeoutExceededError",
    "checkpoint_handle",
    "checkpoint_named",
    "error_body",
    "error_detail",
    "error_response",
    "exception_from_failure",
    "failure_from_dict",
    "failure_from_exception",
    "failure_record",
    "failure_to_dict",
    "is_handle",
    "is_terminal",
    "tensor_of",
    "vae_file_handle",
    "value_from_dict",
    "value_to_dict",
    "wirejson",
]
