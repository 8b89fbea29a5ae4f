"""Whether a job's stages make step previews: ComfyUI sends none unless its preview method is set, by the
server (`COMFYMESH_PREVIEW_METHOD`, ComfyUI's `--preview-method`) or per prompt (`extra_data.preview_method`).

We have latent2rgb previews only: `auto` and `taesd` are served as latent2rgb (as ComfyUI does when its
TAESD decoders are missing). `default` means the server's setting."""

from __future__ import annotations

from typing import Any

from comfymesh.contracts.comfy_errors import error_detail

PREVIEW_METHODS = ("default", "none", "auto", "latent2rgb", "taesd")


def preview_method_error(extra_data: dict[str, Any]) -> dict[str, Any] | None:
    """ComfyUI's error detail for an `extra_data.preview_method` that names no method, else None."""
    method = extra_data.get("preview_method")
    if method is None or method in PREVIEW_METHODS:
        return None
    return error_detail("invalid_prompt", "Invalid preview method",
                        f"extra_data.preview_method is {str(method)[:40]!r}; use one of {', '.join(PREVIEW_METHODS)}")


def wants_previews(extra_data: dict[str, Any], server_method: str) -> bool:
    """Whether a job asks its stages for previews (its preview method, else the server's)."""
    method = extra_data.get("preview_method")
    if method is None or method == "default":
        method = server_method
    return method != "none"
