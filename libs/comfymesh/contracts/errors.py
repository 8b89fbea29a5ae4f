"""One error hierarchy for every service: a `type`, a node id and whether a retry can help.

Converted to and from the wire in one place (`comfymesh.contracts.failures`), so a stage's error reaches
the gateway with its type and node intact.
"""

from __future__ import annotations


class ComfymeshError(Exception):
    """Base class: `type` is a short machine name, `non_retryable` says a retry cannot help."""

    type: str = "internal_error"
    non_retryable: bool = True

    def __init__(self, message: str, *, node_id: str = "", type: str | None = None,
                 non_retryable: bool | None = None, details: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.node_id = node_id
        self.details = details
        if type is not None:
            self.type = type
        if non_retryable is not None:
            self.non_retryable = non_retryable

    def __str__(self) -> str:
        where = f"node {self.node_id}: " if self.node_id else ""
        return f"{where}{self.message}"


class NodeInputError(ComfymeshError):
    """The node's inputs are wrong (a missing file, a bad value): the user must change the graph."""

    type = "invalid_input"


class ModelError(ComfymeshError):
    """A model file is missing, corrupt or of an unknown layout."""

    type = "model_error"


class StageRequestError(ComfymeshError):
    """The request itself failed on a healthy stage: report it, do not move it elsewhere."""

    type = "stage_error"


class StageUnavailableError(ComfymeshError):
    """The stage replica is dead or unreachable: the only failure that moves work to another replica."""

    type = "stage_unavailable"
    non_retryable = False


class StageBusyError(ComfymeshError):
    """A stage refused a call before running it (no free slot, or draining): try another replica or wait; not
    a failure of the node, so it uses up no attempt."""

    type = "stage_busy"
    non_retryable = False

    def __init__(self, message: str, *, draining: bool = False) -> None:
        super().__init__(message)
        self.draining = draining


class ResourceExhaustedError(ComfymeshError):
    """Out of (GPU) memory on this replica: another replica may succeed."""

    type = "out_of_memory"
    non_retryable = False


class ModelTooLargeError(ResourceExhaustedError):
    """A model that cannot fit the memory budget even alone (or streamed): no replica of this size can run it."""

    type = "model_too_large"
    non_retryable = True


class TimeoutExceededError(ComfymeshError):
    """A timeout policy fired (queue wait, attempt, overall or heartbeat)."""

    type = "timeout"
    non_retryable = True


class InterruptedError_(ComfymeshError):
    """The job was cancelled by a user while this node ran."""

    type = "interrupted"
    non_retryable = True


__all__ = [
    "ComfymeshError",
    "InterruptedError_",
    "ModelError",
    "ModelTooLargeError",
    "NodeInputError",
    "ResourceExhaustedError",
    "StageBusyError",
    "StageRequestError",
    "StageUnavailableError",
    "TimeoutExceededError",
]
