"""Which gRPC status codes mean the other service is gone (dead, restarting, unreachable), not that it
answered with an error: the one rule that decides whether work may move to another replica."""

from __future__ import annotations

import grpc

# What a caller sees when the server process dies or cannot be reached: a refused or reset connection
# (UNAVAILABLE), a stream cut mid-call (CANCELLED, UNKNOWN, INTERNAL from a reset HTTP/2 stream) or no
# answer in time (DEADLINE_EXCEEDED).
UNAVAILABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN,
                               grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL})


def is_unavailable(error: grpc.aio.AioRpcError) -> bool:
    """Whether a failed call means its server is gone (try another replica, or answer 503), not that it refused."""
    return error.code() in UNAVAILABLE_CODES


# A stage refusing a call before starting it (not a failure of the call's nodes): every slot is taken, or the
# stage is draining for shutdown. The details name which, so the caller can tell them from a real failure.
BUSY_DETAILS = "comfymesh-busy"
DRAINING_DETAILS = "comfymesh-draining"


def refusal(error: grpc.aio.AioRpcError) -> str:
    """BUSY_DETAILS or DRAINING_DETAILS when a stage refused the call before running it; "" otherwise."""
    if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and error.details() == BUSY_DETAILS:
        return BUSY_DETAILS
    if error.code() == grpc.StatusCode.UNAVAILABLE and error.details() == DRAINING_DETAILS:
        return DRAINING_DETAILS
    return ""


__all__ = ["BUSY_DETAILS", "DRAINING_DETAILS", "UNAVAILABLE_CODES", "is_unavailable", "refusal"]
