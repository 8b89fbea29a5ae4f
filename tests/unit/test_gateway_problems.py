"""The /v1 error shape and the documented event catalog: one home each, checked against what they describe."""

from __future__ import annotations

from comfymesh.contracts.comfy_errors import error_body
from comfymesh.contracts.events import EventType
from comfymesh.gateway.api_docs import EVENT_DATA
from comfymesh.gateway.problems import CODES, from_legacy, problem_or_legacy


def test_every_event_a_v1_stream_sends_is_documented() -> None:
    # previews go to ComfyUI's /ws only, never to SSE
    assert set(EVENT_DATA) == set(EventType) - {EventType.NODE_PREVIEW}


def test_a_comfyui_body_reads_as_a_problem_on_v1_only() -> None:
    body = error_body("queue_full", "The queue is full", "retry later", node_errors={"3": {"errors": []}})
    problem, media = problem_or_legacy("/v1/workflows", 429, body)
    assert media == "application/problem+json"
    assert problem == {"type": "urn:comfymesh:problem:queue_full", "title": "The queue is full", "status": 429,
                       "detail": "The queue is full: retry later", "instance": "/v1/workflows", "code": "queue_full",
                       "node_errors": {"3": {"errors": []}}}
    assert problem_or_legacy("/prompt", 429, body) == (body, "application/json")
    assert problem_or_legacy("/v1x", 429, body)[1] == "application/json"


def test_a_detail_body_keeps_its_words_and_codes_are_documented() -> None:
    problem = from_legacy(401, {"detail": "authentication required: send a token"}, "/v1/jobs")
    assert problem["detail"] == "authentication required: send a token" and problem["code"] == "unauthorized"
    assert problem["code"] in CODES and "queue_full" in CODES and "idempotency_conflict" in CODES


class _BrokenEngine:
    """An engine whose job lookup has a bug: the gateway's answer to an unexpected exception."""

    async def close(self) -> None:
        return None

    async def get_job(self, job_id: str, status_only: bool = False) -> None:
        raise RuntimeError("a bug")


def test_a_crash_on_v1_is_a_problem_and_elsewhere_starlettes_text() -> None:
    from typing import Any, cast

    from fastapi.testclient import TestClient

    from comfymesh.config import Settings
    from comfymesh.gateway.app import create_app

    app = create_app(Settings(), engine=cast(Any, _BrokenEngine()))
    with TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False) as client:
        crashed = client.get("/v1/jobs/x")
        assert crashed.status_code == 500 and crashed.headers["content-type"] == "application/problem+json"
        assert crashed.json()["code"] == "internal_error" and crashed.json()["instance"] == "/v1/jobs/x"
        comfy = client.get("/api/jobs/x")
        assert comfy.status_code == 500 and comfy.text == "Internal Server Error"


def test_the_openapi_document_is_completed_again_when_routes_change() -> None:
    from comfymesh.config import Settings
    from comfymesh.gateway.app import create_app

    app = create_app(Settings())
    first = app.openapi()
    assert "WorkflowSubmission" in first["components"]["schemas"] and "/v1/added" not in first["paths"]

    @app.get("/v1/added", responses={404: {"description": "none"}})
    async def added() -> dict[str, str]:
        return {}

    app.openapi_schema = None  # what a route added at run time asks for
    again = app.openapi()
    assert "/v1/added" in again["paths"]
    assert again["paths"]["/v1/added"]["get"]["responses"]["404"]["content"] == {
        "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
