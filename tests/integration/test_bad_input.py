"""Bad input gets HTTP 400 in ComfyUI's error shape, all errors at once; nothing of it is persisted."""

from __future__ import annotations

from typing import Any

import pytest

from tests.mesh import Mesh


def base() -> dict[str, Any]:
    return {"1": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
            "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "bad"}}}


def job_count(mesh: Mesh) -> int:
    return int(mesh.http.get("/v1/jobs", params={"limit": 1}).json()["total"])


def post(mesh: Mesh, prompt: Any) -> Any:
    return mesh.http.post("/v1/workflows", json={"prompt": prompt})


def node_error_types(body: dict[str, Any]) -> dict[str, list[str]]:
    return {node: [e["type"] for e in entry["errors"]] for node, entry in body["node_errors"].items()}


def test_unknown_class_type(imaging_mesh: Mesh) -> None:
    prompt = base()
    prompt["2"]["class_type"] = "NoSuchNode"
    body = post(imaging_mesh, prompt).json()
    # /v1 answers a problem: ComfyUI's error type as its code, the message as its title
    assert (body["code"], body["title"], body["detail"]) == (
        "invalid_prompt", "Cannot execute because node NoSuchNode does not exist.",
        "Cannot execute because node NoSuchNode does not exist.: Node ID '#2'")


def test_missing_class_type(imaging_mesh: Mesh) -> None:
    prompt = base()
    del prompt["2"]["class_type"]
    body = post(imaging_mesh, prompt).json()
    assert body["code"] == "invalid_prompt" and "class_type" in body["title"]


@pytest.mark.parametrize(("mutate", "node", "error_type"), [
    (lambda p: p["3"]["inputs"].pop("filename_prefix"), "3", "required_input_missing"),
    (lambda p: p["2"]["inputs"].update(image=["9", 0]), "2", "exception_during_inner_validation"),
    (lambda p: p["2"]["inputs"].update(image=["1", 5]), "2", "exception_during_inner_validation"),
    (lambda p: p["2"]["inputs"].update(image=["1", 1]), "2", "return_type_mismatch"),
    (lambda p: p["2"]["inputs"].update(image=["1"]), "2", "bad_linked_input"),
    (lambda p: p["1"]["inputs"].update(image="missing.png"), "1", "custom_validation_failed"),
    (lambda p: p.update({"4": {"class_type": "ImageScale", "inputs": {
        "image": ["1", 0], "upscale_method": "sideways", "width": 8, "height": 8, "crop": "disabled"}},
        "5": {"class_type": "PreviewImage", "inputs": {"images": ["4", 0]}}}) or p["3"]["inputs"].pop("images"),
     "4", "value_not_in_list"),
    (lambda p: p.update({"4": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 99,
                                                                     "sigma": 1.0}},
                         "5": {"class_type": "PreviewImage", "inputs": {"images": ["4", 0]}}})
     or p["3"]["inputs"].pop("images"), "4", "value_bigger_than_max"),
    (lambda p: p["3"]["inputs"].update(filename_prefix={"not": "a string"}), "3", "invalid_input_type"),
])
def test_node_errors(imaging_mesh: Mesh, mutate: Any, node: str, error_type: str) -> None:
    before = job_count(imaging_mesh)
    prompt = base()
    mutate(prompt)
    reply = post(imaging_mesh, prompt)
    assert reply.status_code == 400, reply.text
    body = reply.json()
    assert body["code"] == "prompt_outputs_failed_validation"
    assert error_type in node_error_types(body)[node], body
    entry = body["node_errors"][node]
    assert entry["class_type"] == prompt[node]["class_type"] and entry["dependent_outputs"]
    assert job_count(imaging_mesh) == before


def test_cycle(imaging_mesh: Mesh) -> None:
    prompt = base()
    prompt["2"]["inputs"]["image"] = ["4", 0]
    prompt["4"] = {"class_type": "ImageInvert", "inputs": {"image": ["2", 0]}}
    body = post(imaging_mesh, prompt).json()
    assert body["code"] == "prompt_outputs_failed_validation"
    assert any("dependency_cycle" in types for types in node_error_types(body).values())


def test_all_errors_at_once(imaging_mesh: Mesh) -> None:
    prompt = base()
    prompt["1"]["inputs"]["image"] = "missing.png"
    prompt["3"]["inputs"].pop("filename_prefix")
    prompt["4"] = {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 0, "sigma": 99.0}}
    prompt["5"] = {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "x"}}
    body = post(imaging_mesh, prompt).json()
    types = node_error_types(body)
    assert types["1"] == ["custom_validation_failed"]
    assert types["3"] == ["required_input_missing"]
    assert sorted(types["4"]) == ["value_bigger_than_max", "value_smaller_than_min"]
    assert body["node_errors"]["1"]["dependent_outputs"] == ["3", "5"]
    assert "Required input is missing: filename_prefix" in body["detail"]


def test_valid_outputs_still_run_when_another_fails(imaging_mesh: Mesh) -> None:
    prompt = base()
    prompt["4"] = {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 0, "sigma": 1.0}}
    prompt["5"] = {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "x"}}
    reply = post(imaging_mesh, prompt)
    assert reply.status_code == 202
    assert list(reply.json()["node_errors"]) == ["4"]
    job = imaging_mesh.wait(reply.json()["job_id"])
    assert job["status"] == "completed" and list(job["outputs"]) == ["3"]


def test_no_output_node(imaging_mesh: Mesh) -> None:
    prompt = base()
    del prompt["3"]
    body = post(imaging_mesh, prompt).json()
    assert body["code"] == "prompt_no_outputs"


def test_empty_and_wrong_bodies(imaging_mesh: Mesh) -> None:
    reply = imaging_mesh.http.post("/v1/workflows", content=b"{not json", headers={"content-type": "application/json"})
    assert reply.status_code == 400 and reply.json()["code"] == "invalid_prompt"
    not_an_object = imaging_mesh.http.post("/v1/workflows", json=[1, 2])
    assert not_an_object.status_code == 422 and not_an_object.json()["code"] == "invalid_request"
    assert imaging_mesh.http.post("/v1/workflows", json={}).json()["code"] == "no_prompt"


def test_body_over_limit_is_413(imaging_mesh: Mesh) -> None:
    before = job_count(imaging_mesh)
    prompt = base()
    prompt["3"]["inputs"]["filename_prefix"] = "x" * (17 * 1024 * 1024)
    reply = post(imaging_mesh, prompt)
    assert reply.status_code == 413
    assert reply.json()["code"] == "request_too_large"
    assert job_count(imaging_mesh) == before


def test_unknown_job_is_404(imaging_mesh: Mesh) -> None:
    assert imaging_mesh.http.get("/v1/jobs/nope").status_code == 404
    assert imaging_mesh.http.get("/v1/jobs/nope/output").status_code == 404
    assert imaging_mesh.http.get("/v1/jobs/nope/events").status_code == 404


def test_server_limits_on_pixels_batch_and_steps(imaging_mesh: Mesh) -> None:
    prompt = {"1": {"class_type": "EmptyImage", "inputs": {"width": 4096, "height": 4096, "batch_size": 64,
                                                           "color": 0}},
              "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}
    body = post(imaging_mesh, prompt).json()
    error = body["node_errors"]["1"]["errors"]
    assert {e["type"] for e in error} == {"value_bigger_than_max"}
    assert "COMFYMESH_MAX_" in " ".join(e["details"] for e in error)
