"""Our page that runs saved workflows (`ui/workflows/`): a form per workflow, live progress, a gallery."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

PAGE_DIR = Path(__file__).resolve().parents[4] / "ui" / "workflows"
PAGE_PATH = "/ui/workflows"


def install(app: FastAPI) -> None:
    @app.get(PAGE_PATH, include_in_schema=False)
    async def page() -> RedirectResponse:
        return RedirectResponse(PAGE_PATH + "/", status_code=308)

    app.mount(PAGE_PATH, StaticFiles(directory=PAGE_DIR, html=True), name="workflow_page")
