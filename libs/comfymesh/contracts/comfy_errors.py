"""ComfyUI's error body, built in one place: `{"error": {type, message, details, extra_info}, "node_errors"}`."""

from __future__ import annotations

from typing import Any


def error_detail(type: str, message: str, details: str = "",
                 extra_info: dict[str, Any] | None = None) -> dict[str, Any]:
    """One error as ComfyUI writes it, inside the body and in each node's `errors` list."""
    return {"type": type, "message": message, "details": details, "extra_info": extra_info or {}}


def error_response(error: dict[str, Any] | None, node_errors: dict[str, Any] | None = None) -> dict[str, Any]:
    """The body for an error already in ComfyUI's form (`error_detail`), with the errors of each node."""
    return {"error": error, "node_errors": node_errors or {}}


def error_body(type: str, message: str, details: str = "", extra_info: dict[str, Any] | None = None,
               node_errors: dict[str, Any] | None = None) -> dict[str, Any]:
    """The body ComfyUI answers a refused request with."""
    return error_response(error_detail(type, message, details, extra_info), node_errors)
