"""File routes shared with ComfyUI's API: `/view` serves images from input, output and temp only."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import FileResponse

from comfymesh.catalog.files import resolve_inside

router = APIRouter(tags=["files"])
FOLDERS = ("output", "input", "temp")


@router.get("/view", name="view_file", response_class=FileResponse, include_in_schema=False)
@router.get("/api/view", name="api_view_file", response_class=FileResponse, include_in_schema=False)
async def view_file(request: Request, filename: str = Query(..., min_length=1, max_length=1024),
                    subfolder: str = Query("", max_length=1024), type: str = Query("output")) -> FileResponse:
    if type not in FOLDERS:
        raise HTTPException(400, f"type must be one of {', '.join(FOLDERS)}")
    if "/" in filename or "\\" in filename or filename.startswith("."):
        raise HTTPException(400, "filename must be a plain file name; put folders in `subfolder`")
    home = request.app.state.settings.home
    folder = home / type
    base = resolve_inside(folder, subfolder) if subfolder else folder.resolve()
    path = resolve_inside(folder, f"{subfolder}/{filename}" if subfolder else filename)
    if base is None or path is None:
        raise HTTPException(403, "the path leaves its folder")
    if not path.is_file():
        raise HTTPException(404, f"{type}/{subfolder + '/' if subfolder else ''}{filename} does not exist")
    return FileResponse(path)
