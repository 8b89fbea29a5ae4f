"""Saved workflows as typed endpoints (`/v1/workflows/{name}`), their OpenAPI entries, and our page that runs
them (`/ui/workflows`)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from comfymesh.gateway.workflows import page, routes
from comfymesh.gateway.workflows.openapi import with_saved_workflows
from comfymesh.gateway.workflows.store import WorkflowStore


def install(app: FastAPI) -> None:
    """Mount the routes and the page; call after `api_docs.install` (its document is completed here)."""
    store = app.state.workflow_store = WorkflowStore(app.state.settings.home)
    app.include_router(routes.router)
    page.install(app)
    base = app.openapi

    def openapi() -> dict[str, Any]:
        return with_saved_workflows(base(), store.all(), routes.example_body)

    app.openapi = openapi  # type: ignore[method-assign]
