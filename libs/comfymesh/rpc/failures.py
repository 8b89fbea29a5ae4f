"""Errors to and from the wire in one place, so a failure keeps its type, node and retryability."""

from __future__ import annotations

from comfymesh import errors
from comfymesh.v1 import common_pb2

_BY_TYPE: dict[str, type[errors.ComfymeshError]] = {
    cls.type: cls for cls in (errors.NodeInputError, errors.ModelError, errors.StageRequestError,
                              errors.StageUnavailableError, errors.ResourceExhaustedError,
                              errors.TimeoutExceededError, errors.InterruptedError_)
}


def failure_from_exception(exc: BaseException, node_id: str = "", node_type: str = "") -> common_pb2.Failure:
    """A structured failure; an unexpected exception is reported as not retryable with its class name."""
    if isinstance(exc, errors.ComfymeshError):
        return common_pb2.Failure(type=exc.type, node_id=exc.node_id or node_id, message=exc.message,
                                  non_retryable=exc.non_retryable, details=exc.details, node_type=node_type)
    return common_pb2.Failure(type="execution_error", node_id=node_id, node_type=node_type,
                              message=f"{type(exc).__name__}: {exc}", non_retryable=True,
                              details=type(exc).__name__)


def exception_from_failure(failure: common_pb2.Failure) -> errors.ComfymeshError:
    cls = _BY_TYPE.get(failure.type, errors.ComfymeshError)
    return cls(failure.message, node_id=failure.node_id, type=failure.type,
               non_retryable=failure.non_retryable, details=failure.details)

