"""ComfyUI's HTTP and websocket API, and its web frontend, served by the gateway over the same job store.

Every ComfyUI route exists bare (API scripts) and under `/api` (the frontend), as in ComfyUI (§1.3).
"""

from __future__ import annotations

from fastapi import FastAPI

from comfymesh.gateway.comfy import frontend, prompt, queue, system, uploads, userdata, ws

# routers whose routes ComfyUI registers twice, at /x and /api/x
_PREFIXED = (prompt.router, queue.router, system.router, uploads.router, userdata.router, frontend.router)


def install(app: FastAPI) -> None:
    """Add ComfyUI's API routes to `app`; they come before any mount of ours under /api (ComfyUI's own
    /api/v2/userdata must win over the Comfy API v2 mount at /api/v2)."""
    for router in _PREFIXED:
        app.include_router(router)
        app.include_router(router, prefix="/api")
    app.include_router(queue.jobs_router)
    app.include_router(system.internal_router)
    app.include_router(ws.router)


def install_frontend(app: FastAPI) -> None:
    """The frontend's pages and static files, and the 404 for unknown /api paths; call it last: they catch
    every path no route took."""
    app.include_router(frontend.static_router)
    app.mount("/", frontend.frontend_files(), name="frontend")


async def shutdown(app: FastAPI) -> None:
    """Stop the websocket hub, if one was started (called from the app's lifespan)."""
    hub = getattr(app.state, "comfy_hub", None)
    if hub is not None:
        await hub.stop()


__all__ = ["install", "install_frontend", "shutdown"]
