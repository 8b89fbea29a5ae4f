"""Failures to and from the wire in one place: an exception becomes a `Failure` message (or the dict a job's
record keeps) and back, with its type, node, retryability and cause chain intact."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from comfymesh.contracts import errors
from comfymesh.contracts.errors import ComfymeshError
from comfymesh.v1 import common_pb2

_BY_TYPE: dict[str, type[ComfymeshError]] = {
    cls.type: cls for cls in (errors.NodeInputError, errors.ModelError, errors.StageRequestError,
                              errors.StageUnavailableError, errors.ResourceExhaustedError,
                              errors.ModelTooLargeError, errors.TimeoutExceededError, errors.InterruptedError_)
}
# causes beyond this many are left out: the first links say what went wrong, and a message has a size bound
MAX_CAUSES = 8


def _failure(exc: BaseException, node_id: str = "", node_type: str = "") -> common_pb2.Failure:
    if isinstance(exc, ComfymeshError):
        return common_pb2.Failure(type=exc.type, node_id=exc.node_id or node_id, message=exc.message,
                                  non_retryable=exc.non_retryable, details=exc.details, node_type=node_type)
    return common_pb2.Failure(type="execution_error", node_id=node_id, node_type=node_type,
                              message=f"{type(exc).__name__}: {exc}", non_retryable=True,
                              details=type(exc).__name__)


def failure_from_exception(exc: BaseException, node_id: str = "", node_type: str = "") -> common_pb2.Failure:
    """A structured failure, its `cause` from the exception's `__cause__` chain; an unexpected exception is
    reported as not retryable with its class name."""
    failure = _failure(exc, node_id, node_type)
    link, cause = failure, exc.__cause__
    for _ in range(MAX_CAUSES):
        if cause is None:
            break
        link.cause.CopyFrom(_failure(cause))
        link, cause = link.cause, cause.__cause__
    return failure


def exception_from_failure(failure: common_pb2.Failure) -> ComfymeshError:
    """The exception a failure stands for (its class found by `type`), its cause chain as `__cause__`."""
    cls = _BY_TYPE.get(failure.type, ComfymeshError)
    exc = cls(failure.message, node_id=failure.node_id, type=failure.type,
              non_retryable=failure.non_retryable, details=failure.details)
    if failure.HasField("cause"):
        exc.__cause__ = exception_from_failure(failure.cause)
    return exc


def failure_to_dict(failure: common_pb2.Failure) -> dict[str, Any]:
    """A failure as a job's record and its `failed` event keep it (`cause` only when there is one)."""
    out: dict[str, Any] = {"type": failure.type, "node_id": failure.node_id, "message": failure.message,
                           "non_retryable": failure.non_retryable, "details": failure.details,
                           "node_type": failure.node_type}
    if failure.HasField("cause"):
        out["cause"] = failure_to_dict(failure.cause)
    return out


def failure_from_dict(error: Mapping[str, Any]) -> common_pb2.Failure:
    """The inverse of failure_to_dict; a key a record lacks (written by an older version) takes its default."""
    failure = common_pb2.Failure(type=str(error.get("type", "")), node_id=str(error.get("node_id", "")),
                                 message=str(error.get("message", "")), details=str(error.get("details", "")),
                                 non_retryable=bool(error.get("non_retryable", True)),
                                 node_type=str(error.get("node_type", "")))
    cause = error.get("cause")
    if isinstance(cause, Mapping):
        failure.cause.CopyFrom(failure_from_dict(cause))
    return failure


def failure_record(exc: BaseException, node_type: str = "") -> dict[str, Any]:
    """The dict a job's record keeps for the exception that failed it."""
    return failure_to_dict(failure_from_exception(exc, node_type=node_type))


__all__ = ["MAX_CAUSES", "exception_from_failure", "failure_from_dict", "failure_from_exception",
           "failure_record", "failure_to_dict"]
