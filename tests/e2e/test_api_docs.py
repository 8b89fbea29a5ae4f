"""/v1/docs in headless chromium with every request beyond this machine aborted: Swagger UI comes from the
pinned wheel through the gateway (never a CDN) and renders the /v1 operations, the workflow request schema
and the SSE event catalog."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pytest

from tests.e2e.chromium import chromium_page
from tests.mesh import Mesh

if TYPE_CHECKING:
    from playwright.sync_api import Route

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    started = Mesh(tmp_path_factory.mktemp("docs-home"))
    try:
        yield started.start()
    finally:
        started.stop()


@pytest.mark.browser
def test_the_api_docs_render_offline(mesh: Mesh, tmp_path: Path) -> None:
    aborted: list[str] = []
    served: list[str] = []

    def only_loopback(route: Route) -> None:
        url = route.request.url
        if urlsplit(url).hostname in LOOPBACK:
            served.append(url)
            route.continue_()
        else:
            aborted.append(url)
            route.abort("internetdisconnected")

    with chromium_page() as (page, errors):
        page.route("**/*", only_loopback)
        page.goto(mesh.url + "/v1/docs")
        page.locator(".opblock-summary-path", has_text="/v1/workflows").first.wait_for(timeout=30_000)
        paths = set(page.locator(".opblock-summary-path").all_inner_texts())
        # the operations, with the request schema and the event catalog a click away
        page.locator(".opblock-summary-path", has_text="/v1/workflows").first.click()
        page.get_by_text("Idempotency-Key").first.wait_for(timeout=10_000)
        page.locator(".opblock-summary-path", has_text="/v1/events").first.click()
        page.get_by_text("node_progress", exact=False).first.wait_for(timeout=10_000)
        models = page.locator(".models").inner_text()
    assert not aborted, aborted  # nothing but the gateway was asked for anything
    assert not errors, errors
    assert any("/v1/docs/assets/swagger-ui-bundle.js" in url for url in served), served
    assert {"/v1/workflows", "/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/cancel", "/v1/events"} <= {
        p.replace("\u200b", "").strip() for p in paths}, paths
    assert "WorkflowSubmission" in models and "Problem" in models and "SseEvent" in models
