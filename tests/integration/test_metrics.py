"""/metrics scraped from a real mesh while jobs run: the orchestrator's stage-call gauges and store-wide queue
depth (what the KEDA ScaledObjects read), its job and stage-call counters, and the gateway's HTTP counters."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.mesh import REPO, Mesh, free_port

HANGING = "ImageBlur"  # hangs until cancelled (COMFYMESH_TEST_HANG_NODES): calls stay running for the scrape
SLOTS, DRIVEN = 2, 4   # one imaging replica with 2 slots; the orchestrator drives 4 jobs at once


def prompt(*, hang: bool) -> dict[str, object]:
    nodes: dict[str, object] = {"1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32,
                                                                            "batch_size": 1, "color": 0}}}
    image = ["1", 0]
    if hang:
        nodes["2"] = {"class_type": HANGING, "inputs": {"image": image, "blur_radius": 1, "sigma": 1.0}}
        image = ["2", 0]
    nodes["3"] = {"class_type": "SaveImage", "inputs": {"images": image, "filename_prefix": "metrics"}}
    return nodes


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    metrics = f"127.0.0.1:{free_port()}"
    started = Mesh(Path(tmp_path_factory.mktemp("metrics")), env={
        "COMFYMESH_TEST_HANG_NODES": HANGING, "COMFYMESH_ORCHESTRATOR_METRICS": metrics,
        "COMFYMESH_STAGE_SLOTS": str(SLOTS), "COMFYMESH_MAX_RUNNING_JOBS": str(DRIVEN)}).start()
    started.metrics_url = f"http://{metrics}/metrics"  # type: ignore[attr-defined]
    yield started
    started.stop()


def scrape(url: str, client: httpx.Client | None = None) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text page, parsed by prometheus_client's own parser: {(name, labels): value}."""
    reply = (client or httpx).get(url)
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/plain"), reply.text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(reply.text) for s in family.samples}


def wait_for(url: str, expected: dict[tuple[str, tuple[tuple[str, str], ...]], float], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(url)
        seen = {key: samples.get(key) for key in expected}
        if seen == expected:
            return
        assert time.monotonic() < deadline, f"expected {expected}, scraped {seen}"
        time.sleep(0.1)


def stage(name: str, value: float) -> tuple[tuple[str, tuple[tuple[str, str], ...]], float]:
    return (name, (("stage", "imaging"),)), value


def test_calls_waiting_running_and_queue_depth_during_jobs(mesh: Mesh) -> None:
    url = mesh.metrics_url  # type: ignore[attr-defined]
    jobs = [mesh.submit(prompt(hang=True)) for _ in range(DRIVEN + 2)]
    # 2 calls run (the slots) and the other 2 driven jobs' calls wait for a slot; those 2 jobs are not started
    # yet, so with the 2 the orchestrator has not taken, 4 are queued in the store
    wait_for(url, dict([stage("comfymesh_stage_calls_running", SLOTS), stage("comfymesh_stage_calls_waiting", 2),
                        stage("comfymesh_jobs_queued", len(jobs) - SLOTS), stage("comfymesh_stage_slots", SLOTS),
                        (("comfymesh_jobs_running", ()), DRIVEN), (("comfymesh_jobs_submitted_total", ()), len(jobs))]))
    for job_id in jobs:
        assert mesh.http.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
    wait_for(url, dict([stage("comfymesh_stage_calls_running", 0), stage("comfymesh_stage_calls_waiting", 0),
                        stage("comfymesh_jobs_queued", 0), (("comfymesh_jobs_running", ()), 0),
                        (("comfymesh_jobs_finished_total", (("status", "cancelled"),)), len(jobs))]))

    done = mesh.wait(mesh.submit(prompt(hang=False)))
    assert done["status"] == "completed"
    samples = scrape(url)
    assert samples[("comfymesh_jobs_finished_total", (("status", "completed"),))] == 1
    assert samples[("comfymesh_jobs_submitted_total", ())] == len(jobs) + 1
    assert samples[("comfymesh_stage_calls_total", (("outcome", "ok"), ("stage", "imaging")))] >= 1
    assert samples[("process_resident_memory_bytes", ())] > 0


def test_gateway_counts_requests_by_route_template(mesh: Mesh) -> None:
    job_id = mesh.submit(prompt(hang=False))
    mesh.wait(job_id)
    assert mesh.http.get("/v1/jobs/no-such-job").status_code == 404
    samples = scrape("/metrics", mesh.http)
    ok = ("comfymesh_http_requests_total", (("method", "GET"), ("route", "/v1/jobs/{job_id}"), ("status", "200")))
    missing = ("comfymesh_http_requests_total", (("method", "GET"), ("route", "/v1/jobs/{job_id}"), ("status", "404")))
    submitted = ("comfymesh_http_requests_total", (("method", "POST"), ("route", "/v1/workflows"), ("status", "202")))
    assert samples[ok] >= 1 and samples[missing] == 1 and samples[submitted] >= 1
    assert samples[("comfymesh_http_request_duration_seconds_count",
                    (("method", "POST"), ("route", "/v1/workflows")))] == samples[submitted]
    assert samples[("comfymesh_http_requests_in_progress", ())] == 1  # this scrape
    assert not any(dict(labels).get("route") == "/v1/jobs/no-such-job" for _, labels in samples)


@pytest.fixture
def prometheus(mesh: Mesh, tmp_path: Path) -> Iterator[str]:
    """A real Prometheus (Debian's `prometheus`, `make system-deps`) scraping the orchestrator every second."""
    binary = shutil.which("prometheus")
    assert binary, "Prometheus is missing: run `make system-deps` (Debian's prometheus package)"
    target = mesh.metrics_url.removeprefix("http://").removesuffix("/metrics")  # type: ignore[attr-defined]
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({"global": {"scrape_interval": "1s"}, "scrape_configs": [
        {"job_name": "orchestrator", "static_configs": [{"targets": [target]}]}]}))
    url = f"http://127.0.0.1:{free_port()}"
    process = subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                f"--web.listen-address={url.removeprefix('http://')}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # ready, and the orchestrator scraped once (Prometheus hands its first targets over after about 5 s)
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/api/v1/query", params={"query": 'up{job="orchestrator"} == 1'}).json()[
                        "data"]["result"]:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, "Prometheus never scraped the orchestrator"
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(10)


def scaled_object_queries() -> dict[str, str]:
    """Each stage's query, as deploy/k8s's KEDA ScaledObjects give it to Prometheus."""
    docs = yaml.safe_load_all((REPO / "deploy" / "k8s" / "base" / "scaling.yaml").read_text())
    return {doc["metadata"]["name"]: doc["spec"]["triggers"][0]["metadata"]["query"] for doc in docs}


def test_prometheus_evaluates_the_scaled_objects_queries_to_waiting_plus_running(
        mesh: Mesh, prometheus: str) -> None:
    """Acceptance 6 of issue 18: within 5 s, Prometheus's answer equals the calls the orchestrator holds."""
    queries = scaled_object_queries()
    jobs = [mesh.submit(prompt(hang=True)) for _ in range(DRIVEN + 1)]
    try:
        wait_for(mesh.metrics_url, dict([stage("comfymesh_stage_calls_running", SLOTS),  # type: ignore[attr-defined]
                                         stage("comfymesh_stage_calls_waiting", DRIVEN - SLOTS)]))
        seen, deadline = {}, time.monotonic() + 5
        while time.monotonic() < deadline:
            seen = {name: [float(r["value"][1]) for r in httpx.get(f"{prometheus}/api/v1/query", params={
                "query": query}).json()["data"]["result"]] for name, query in queries.items()}
            if seen == {"imaging": [DRIVEN], "diffusion": [0]}:  # no diffusion stage here: `or vector(0)`
                break
            time.sleep(0.2)
        assert seen == {"imaging": [DRIVEN], "diffusion": [0]}
    finally:
        for job_id in jobs:
            mesh.http.post(f"/v1/jobs/{job_id}/cancel")
