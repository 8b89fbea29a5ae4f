"""The /v1 API's documentation: Swagger UI from the pinned `swagger-ui-bundle-v2` wheel (never a CDN, so the
page works offline) and the OpenAPI document, completed with what FastAPI cannot infer from the routes: the
problem bodies every /v1 error is answered with, the workflow request schema, and the SSE event catalog."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import swagger_ui_bundle
from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from comfymesh.contracts.events import EventType
from comfymesh.gateway.models import SUBMISSION_EXAMPLE, Problem, SseEvent, WorkflowSubmission
from comfymesh.gateway.problems import CODES, MEDIA_TYPE, is_v1

DOCS_PATH = "/v1/docs"
OPENAPI_PATH = "/v1/openapi.json"
ASSETS_PATH = "/v1/docs/assets"
_REF = "#/components/schemas/"

# answers a middleware may give on any route, before the route runs
_ANY_ROUTE = {401: "No or wrong credentials (when authentication is configured)",
              403: "A page of another site, or a Host name this server does not answer to",
              429: "Too many state-changing requests, or locked out after wrong tokens; see Retry-After"}
_WITH_BODY = {400: "The body is not JSON", 413: "The body is over the configured limit",
              415: "A JSON body sent as text/plain"}

# what each event's `data` carries besides job_id, node_id and ts (the SSE `event:` field names the type);
# previews go to ComfyUI's /ws only
EVENT_DATA: dict[EventType, str] = {
    EventType.QUEUED: "`number`, `client_id`: accepted and persisted",
    EventType.REQUEUED: "an orchestrator restart put a running job back in the queue",
    EventType.STARTED: "`number`, `client_id`: taken from the queue",
    EventType.CACHED: "`nodes` (ids served from the cache), `ui` (their UI results)",
    EventType.NODE_RUNNING: "`class_type`: a stage began the node `node_id`",
    EventType.NODE_PROGRESS: "`value`, `max`: the node's progress (sampler steps)",
    EventType.NODE_DONE: "`class_type`, `output`: the node's UI result (e.g. `images`)",
    EventType.RETRYING: "`group`, `attempt`, `error`: a stage call is tried again",
    EventType.COMPLETED: "`outputs` (output node ids), `images` (each with an absolute `url`): terminal",
    EventType.FAILED: "`type`, `message`, `node_id`, `node_type`, `details`: terminal",
    EventType.CANCELLED: "`while` (queued or running): terminal",
    EventType.WEBHOOK_DELIVERED: "`attempt`: the job's webhook was delivered",
    EventType.WEBHOOK_FAILED: "`error`: the job's webhook could not be delivered",
}

_DESCRIPTION = """

Every `/v1` error is an RFC 9457 problem (`application/problem+json`): `type` (`urn:comfymesh:problem:<code>`),
`title`, `status`, `detail`, `instance`, plus `code` and, where they apply, `errors` (each invalid field) and
`node_errors` (each node's errors, as ComfyUI gives them). The codes:

""" + "\n".join(f"- `{code}`: {meaning}" for code, meaning in CODES.items())


def install(app: FastAPI) -> None:
    """Serve /v1/docs and its assets, and complete the app's OpenAPI document (see `complete`)."""
    assets = Path(swagger_ui_bundle.swagger_ui_path)
    app.mount(ASSETS_PATH, StaticFiles(directory=assets), name="swagger_ui_assets")

    @app.get(DOCS_PATH, include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=OPENAPI_PATH, title=f"{app.title} API",
                                   swagger_js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{ASSETS_PATH}/swagger-ui.css",
                                   swagger_favicon_url=f"{ASSETS_PATH}/favicon-32x32.png")

    generate = app.openapi  # FastAPI's, which caches its document in app.openapi_schema
    completed: list[dict[str, Any]] = []

    def openapi() -> dict[str, Any]:
        doc = generate()
        # completed once per document FastAPI makes: whoever resets app.openapi_schema (routes added at
        # run time) gets a new one, completed in turn
        if not completed or completed[0] is not doc:
            completed[:] = [complete(doc)]
        return doc

    app.openapi = openapi  # type: ignore[method-assign]


def _problem_content() -> dict[str, Any]:
    return {MEDIA_TYPE: {"schema": {"$ref": _REF + "Problem"}}}


def complete(doc: dict[str, Any]) -> dict[str, Any]:
    """The document with /v1's errors as problems, its request schemas and its event catalog."""
    doc["info"]["description"] = doc["info"].get("description", "") + _DESCRIPTION
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas["Problem"] = Problem.model_json_schema(ref_template=_REF + "{model}")
    for name, model in (("WorkflowSubmission", WorkflowSubmission), ("SseEvent", SseEvent)):
        schema = model.model_json_schema(ref_template=_REF + "{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[name] = schema
    # the health and file routes beside /v1 answer errors as `{"detail": ...}`
    schemas["Refusal"] = {"type": "object", "required": ["detail"], "properties": {"detail": {"type": "string"}}}
    for path, operations in doc.get("paths", {}).items():
        if not is_v1(path):
            for operation in operations.values():
                for response in operation.get("responses", {}).values():
                    for media in response.get("content", {}).values():
                        if media.get("schema") == {"$ref": _REF + "Problem"}:
                            media["schema"] = {"$ref": _REF + "Refusal"}
            continue
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            for status, response in responses.items():
                if status.isdigit() and int(status) >= 400:
                    response["content"] = _problem_content()
            extra = {**_ANY_ROUTE, **(_WITH_BODY if method in ("post", "put", "patch") else {}),
                     422: "The request does not match its schema; `errors` lists each field"}
            for status_code, description in extra.items():
                responses.setdefault(str(status_code), {"description": description, "content": _problem_content()})
            if "events" in path:
                responses["200"] = _event_stream()
    submit = doc.get("paths", {}).get("/v1/workflows", {}).get("post")
    if submit is not None:
        submit["requestBody"] = {"required": True, "content": {"application/json": {
            "schema": {"$ref": _REF + "WorkflowSubmission"},
            "examples": {"txt2img": {"summary": "A prompt with options",
                                     "value": SUBMISSION_EXAMPLE}}}}}
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    return doc


def _event_stream() -> dict[str, Any]:
    catalog = "\n".join(f"- `{event.value}`: {meaning}" for event, meaning in EVENT_DATA.items())
    return {"description": "Server-sent events. Each has `event:` (its type), `id:` (resume with `after` or "
                           "`Last-Event-ID`) and `data:` (JSON, see SseEvent). The types:\n\n" + catalog,
            "content": {"text/event-stream": {"schema": {"$ref": _REF + "SseEvent"}}}}
