"""Comfy API v2 assets: multipart upload (blake3, deduplicated), from-hash, by-hash, metadata, content (Range).

Content goes out as every stored file does here (`stored_files.served_file`): inert media inline, anything else
as a download, always under the sandboxing policy."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from comfymesh.gateway.request_io import principal_of, read_json_body
from comfymesh.gateway.stored_files import served_file
from comfymesh.gateway.v2 import views
from comfymesh.gateway.v2.asset_store import HASH_PATTERN, AssetRecord, HashMismatch
from comfymesh.gateway.v2.context import store_of
from comfymesh.gateway.v2.errors import V2Error
from comfymesh.gateway.v2.schemas import Asset, ErrorEnvelope, FromHash
from comfymesh.gateway.v2.shared_assets import SharedAssetStore

router = APIRouter(tags=["assets"])
MAX_FILE_PATH = 1024
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorEnvelope, "description": "no such asset of yours"}}
UPLOAD_FORM = {"type": "object", "required": ["file"], "properties": {
    "file": {"type": "string", "format": "binary", "description": "the bytes"},
    "file_path": {"type": "string", "maxLength": MAX_FILE_PATH, "description": "the file's name (default: the "
                                                                               "part's file name)"},
    "content_type": {"type": "string", "maxLength": 200},
    "expected_hash": {"type": "string", "maxLength": 100, "description": "`blake3:<hex>`; 409 if the bytes differ"},
    "tags": {"type": "array", "items": {"type": "string"}}}}


def _text(value: Any, name: str, limit: int) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > limit or not value.isprintable():
        raise V2Error(400, "invalid_request", f"{name} must be printable text of at most {limit} characters")
    return value.strip()


def _record(request: Request, asset_id: str) -> AssetRecord:
    record = store_of(request).get(asset_id, principal_of(request))
    if record is None:
        raise V2Error(404, "not_found", f"no asset {asset_id[:100]!r}")
    return record


@router.post("/assets", status_code=201, response_model=Asset, response_model_exclude_none=True,
             summary="Upload a file (multipart): 201 for new bytes, 200 when the same bytes were stored already",
             responses={200: {"model": Asset, "description": "bytes already stored: a new asset over them"},
                        400: {"model": ErrorEnvelope, "description": "not a multipart form with a `file` part"},
                        409: {"model": ErrorEnvelope, "description": "`hash_mismatch`: not the expected_hash"},
                        413: {"model": ErrorEnvelope, "description": "over the body size limit"}},
             openapi_extra={"requestBody": {"required": True,
                                            "content": {"multipart/form-data": {"schema": UPLOAD_FORM}}}})
async def upload_asset(request: Request, response: Response) -> Any:
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        raise V2Error(400, "invalid_request", "send the file as multipart/form-data, in a part named `file`")
    async with request.form(max_files=1, max_fields=100) as form:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise V2Error(400, "invalid_request", "the form has no `file` part (a file)")
        file_path = _text(form.get("file_path"), "file_path", MAX_FILE_PATH) or (upload.filename or "upload")[
            :MAX_FILE_PATH]
        content_type = _text(form.get("content_type"), "content_type", 200) or (upload.content_type or "")
        expected = _text(form.get("expected_hash"), "expected_hash", 100) or None
        if expected is not None and not HASH_PATTERN.match(expected.lower()):
            raise V2Error(400, "invalid_request", "expected_hash must be `blake3:` and 64 hex digits")
        try:
            record, created = await asyncio.to_thread(store_of(request).upload, upload.file, file_path, content_type,
                                                      expected, principal_of(request))
        except HashMismatch as exc:
            raise V2Error(409, "hash_mismatch", str(exc)) from None
    if not created:
        response.status_code = 200
    return views.asset_body(record, views.origin(request), created_new=created)


@router.post("/assets/from-hash", status_code=201, response_model=Asset, response_model_exclude_none=True,
             summary="A new asset over bytes already stored, named by their hash (no upload)",
             responses={404: {"model": ErrorEnvelope, "description": "`blob_not_found`: no bytes with this hash"},
                        400: {"model": ErrorEnvelope, "description": "not JSON"},
                        422: {"model": ErrorEnvelope, "description": "`invalid_request`: a field is wrong"}},
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/json": {"schema": FromHash.model_json_schema()}}}})
async def asset_from_hash(request: Request) -> Any:
    try:
        body = FromHash.model_validate(await read_json_body(request))
    except ValidationError as exc:
        raise V2Error(422, "invalid_request", "the body must be {hash, file_path?, tags?}",
                      {"errors": [{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()]}) from None
    if body.file_path is not None:
        _text(body.file_path, "file_path", MAX_FILE_PATH)
    record = await asyncio.to_thread(store_of(request).from_hash, body.hash, body.file_path, principal_of(request))
    if record is None:
        raise V2Error(404, "blob_not_found", "no stored bytes have this hash: upload them with POST /api/v2/assets")
    return views.asset_body(record, views.origin(request), created_new=False)


@router.head("/assets/by-hash/{digest}", summary="Whether bytes with this hash are stored (200) or not (404)",
             responses={200: {"description": "stored"}, 404: {"description": "not stored"}})
async def asset_by_hash(digest: str, request: Request) -> Response:
    found = await asyncio.to_thread(store_of(request).blob_of, digest.lower())
    return Response(status_code=200 if found is not None else 404)


@router.get("/assets/{asset_id}", response_model=Asset, response_model_exclude_none=True, responses=NOT_FOUND,
            summary="An asset's metadata, with its content URL")
async def get_asset(asset_id: str, request: Request) -> Any:
    return views.asset_body(_record(request, asset_id), views.origin(request))


@router.get("/assets/{asset_id}/content", response_class=FileResponse, summary="An asset's bytes (Range accepted)",
            responses={200: {"content": {"application/octet-stream": {}}, "description": "the bytes"},
                       206: {"content": {"application/octet-stream": {}}, "description": "the requested range"},
                       404: {"model": ErrorEnvelope, "description": "`not_found`, or `output_unavailable` when the "
                                                                    "file was cleaned up"},
                       416: {"model": ErrorEnvelope, "description": "the range is outside the content"}})
async def get_asset_content(asset_id: str, request: Request) -> Response:
    record = _record(request, asset_id)
    store = store_of(request)
    if isinstance(store, SharedAssetStore):
        content = await asyncio.to_thread(store.content_of, record)
        if content is None:
            raise V2Error(404, "output_unavailable", "the asset's file is no longer stored (cleaned up by "
                                                     "retention); run the job again")
        media_type, headers = served_file(record.name.rsplit("/", 1)[-1])
        return Response(content, media_type=media_type, headers=headers)
    path = await asyncio.to_thread(store.path_of, record)
    if path is None:
        raise V2Error(404, "output_unavailable", "the asset's file is no longer stored (cleaned up by retention); "
                                                 "run the job again")
    media_type, headers = served_file(path.name)  # the name we gave the file, never the client's word
    return FileResponse(path, media_type=media_type, headers=headers)


@router.delete("/assets/{asset_id}", status_code=204, responses=NOT_FOUND, summary="Forget an asset",
               response_class=Response)
async def delete_asset(asset_id: str, request: Request) -> Response:
    _record(request, asset_id)
    await asyncio.to_thread(store_of(request).delete, asset_id, principal_of(request))
    return Response(status_code=204)
