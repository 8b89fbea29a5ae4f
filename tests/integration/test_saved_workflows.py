"""Saved workflows as typed endpoints (issue 17) on a real imaging mesh: LoadImage → ImageInvert → SaveImage
registered with its public inputs typed from /object_info, its own OpenAPI entry, runs with images by upload,
base64 and URL (a local HTTP server on 127.0.0.2, the one address the mesh's outbound policy allows; SSRF to
loopback, link-local and through redirects refused before any connection), outputs as PNG/WebP/JPEG inline or
by URL, 202 when the wait runs out, webhooks with output URLs, outputs written to S3 (moto in server mode on
loopback) under an allowed prefix with the server's credentials, and the store surviving a gateway restart."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import boto3
import numpy as np
import pytest
from moto.server import ThreadedMotoServer
from PIL import Image

from tests.mesh import REPO, SHARED, Mesh, free_port
from tests.netguard import Receiver

ALLOWED_HOST = "127.0.0.2"  # the one address the mesh's outbound policy lets through
SECRET = "whsec-saved-workflow-tests"
BUCKET = "renders"
MAX_URL_BYTES = 1024 * 1024  # astronaut.png (773 KiB) fits, the 2 MiB body does not
URL_TIMEOUT_S = 1.0
INVERT: dict[str, Any] = {"1": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
                          "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
                          "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "inv"}}}
INVERT_INPUTS = [{"name": "image", "node_id": "1", "input": "image"},
                 {"name": "prefix", "node_id": "3", "input": "filename_prefix", "description": "file name prefix"}]
BLANK: dict[str, Any] = {"1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 16, "batch_size": 1,
                                                                      "color": 0}},
                         "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "blank"}}}


class ImageServer:
    """Serves GETs on `host`: /image.png (the photo), /big (a body over the limit), /redirect (302 to
    `redirect_to`), /stall (never answers until closed); records every path asked for."""

    def __init__(self, host: str, payload: bytes, redirect_to: str = "") -> None:
        self.paths: list[str] = []
        self.release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.paths.append(self.path)
                if self.path == "/stall":
                    server.release.wait(30)
                    return
                if self.path == "/redirect":
                    self.send_response(302)
                    self.send_header("location", redirect_to)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                body = payload if self.path == "/image.png" else b"\0" * (2 * MAX_URL_BYTES)
                self.send_response(200)
                self.send_header("content-type", "image/png")
                if self.path != "/big":  # the big body comes chunked: the limit holds while reading, too
                    self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.url = f"http://{host}:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def s3() -> Iterator[Any]:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", aws_access_key_id="testing",
                          aws_secret_access_key="testing", region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    client.endpoint = f"http://127.0.0.1:{port}"
    try:
        yield client
    finally:
        server.stop()


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory, s3: Any) -> Iterator[Mesh]:
    home = tmp_path_factory.mktemp("saved")
    options = {"s3": {"key": "testing", "secret": "testing", "endpoint_url": s3.endpoint,
                      "client_kwargs": {"region_name": "us-east-1"}}}
    started = Mesh(home, env={"COMFYMESH_OUTBOUND_ALLOW": f"{ALLOWED_HOST}/32", "COMFYMESH_WEBHOOK_SECRET": SECRET,
                              "COMFYMESH_URL_INPUT_MAX_BYTES": str(MAX_URL_BYTES),
                              "COMFYMESH_URL_INPUT_TIMEOUT_S": str(URL_TIMEOUT_S),
                              "COMFYMESH_OUTPUT_DESTINATIONS": f"s3://{BUCKET}/allowed/",
                              "COMFYMESH_OUTPUT_STORAGE_OPTIONS": json.dumps(options)})
    shutil.copy(SHARED / "data" / "astronaut.png", home / "input" / "example.png")
    try:
        started.start()
        for name, workflow, inputs in (("invert", INVERT, INVERT_INPUTS),
                                       ("blank", BLANK, [{"node_id": "1", "input": "width"},
                                                         {"node_id": "1", "input": "color"}])):
            reply = started.http.put(f"/v1/workflows/{name}", json={"workflow": workflow, "inputs": inputs})
            assert reply.status_code in (200, 201), reply.text
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="module")
def images() -> Iterator[ImageServer]:
    loopback = Receiver("127.0.0.1")  # what a redirect points at: nothing may reach it
    server = ImageServer(ALLOWED_HOST, (SHARED / "data" / "coffee.png").read_bytes(), redirect_to=loopback.url)
    try:
        yield server
    finally:
        server.close()
        loopback.close()
        assert loopback.received == []


def pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def inverted(name: str) -> np.ndarray:
    return 255 - pixels((SHARED / "data" / name).read_bytes())


def until(ready: Callable[[], Any], timeout: float = 20) -> None:
    """Poll `ready` until it is truthy (what another process does in its own time)."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def run(mesh: Mesh, name: str, **body: Any) -> Any:
    return mesh.http.post(f"/v1/workflows/{name}/run", json=body)


def test_inputs_are_typed_from_the_node_declarations(mesh: Mesh) -> None:
    saved = mesh.http.get("/v1/workflows/blank").json()
    declared = mesh.http.get("/object_info/EmptyImage").json()["EmptyImage"]["input"]["required"]
    width = next(item for item in saved["inputs"] if item["name"] == "width")
    assert (width["kind"], width["minimum"], width["maximum"], width["step"]) == (
        "integer", declared["width"][1]["min"], declared["width"][1]["max"], declared["width"][1]["step"])
    assert width["default"] == 32  # the workflow's value, not the node's default (512)
    invert = mesh.http.get("/v1/workflows/invert").json()
    kinds = {item["name"]: (item["kind"], item.get("default"), item.get("description")) for item in invert["inputs"]}
    assert kinds == {"image": ("image", None, declared_tooltip(mesh) or ""), "prefix": ("string", "inv", "file name prefix")}
    assert invert["run_url"] == f"{mesh.url}/v1/workflows/invert/run"
    listed = mesh.http.get("/v1/workflows").json()
    assert [item["name"] for item in listed["items"]] == ["blank", "invert"] and listed["total"] == 2


def declared_tooltip(mesh: Mesh) -> str | None:
    options = mesh.http.get("/object_info/LoadImage").json()["LoadImage"]["input"]["required"]["image"][1]
    return options.get("tooltip")


def test_each_saved_workflow_has_its_own_openapi_entry(mesh: Mesh) -> None:
    doc = mesh.http.get("/v1/openapi.json").json()
    operation = doc["paths"]["/v1/workflows/blank/run"]["post"]
    content = operation["requestBody"]["content"]["application/json"]
    body = doc["components"]["schemas"][content["schema"]["$ref"].rsplit("/", 1)[1]]
    inputs = doc["components"]["schemas"][body["properties"]["inputs"]["$ref"].rsplit("/", 1)[1]]
    width = inputs["properties"]["width"]
    declared = mesh.http.get("/object_info/EmptyImage").json()["EmptyImage"]["input"]["required"]["width"][1]
    assert width["minimum"] == declared["min"] and width["maximum"] == declared["max"] and width["default"] == 32
    assert inputs["additionalProperties"] is False
    assert content["examples"]["defaults"]["value"]["inputs"] == {"width": 32, "color": 0}
    # the example is a run that works, at the documented address
    reply = run(mesh, "blank", **{**content["examples"]["defaults"]["value"], "wait_s": 60})
    assert reply.status_code == 200 and reply.json()["status"] == "completed", reply.text
    assert "/v1/workflows/invert/run" in doc["paths"]


def test_run_by_upload_answers_the_images_inline_in_each_format(mesh: Mesh) -> None:
    expected = inverted("astronaut.png")
    for output_format, media_type, pillow_format, tolerance in (("png", "image/png", "PNG", 0.0),
                                                                  ("webp", "image/webp", "WEBP", 3.0),
                                                                  ("jpeg", "image/jpeg", "JPEG", 3.0)):
        reply = run(mesh, "invert", inputs={"image": "example.png", "prefix": f"up_{output_format}"}, wait_s=60,
                    images_as="base64", output={"format": output_format, "quality": 95})
        assert reply.status_code == 200, reply.text
        result = reply.json()
        [image] = result["images"]
        data = base64.b64decode(image["base64"])
        with Image.open(io.BytesIO(data)) as decoded:
            assert decoded.format == pillow_format
        assert image["media_type"] == media_type and image["filename"].startswith(f"up_{output_format}")
        assert float(np.abs(pixels(data) - expected).mean()) <= tolerance
        fetched = mesh.http.get(image["url"])  # the same image by its absolute URL
        assert fetched.headers["content-type"] == media_type and pixels(fetched.content).shape == expected.shape


def test_run_by_base64_and_by_url(mesh: Mesh, images: ImageServer) -> None:
    coffee = (SHARED / "data" / "coffee.png").read_bytes()
    for value in ({"base64": base64.b64encode(coffee).decode()},
                  {"base64": "data:image/png;base64," + base64.b64encode(coffee).decode()},
                  {"url": f"{images.url}/image.png"}):
        reply = run(mesh, "invert", inputs={"image": value}, wait_s=60, images_as="base64")
        assert reply.status_code == 200, reply.text
        assert np.array_equal(pixels(base64.b64decode(reply.json()["images"][0]["base64"])), inverted("coffee.png"))
    assert images.paths == ["/image.png"]


def test_url_inputs_keep_to_the_outbound_policy_and_the_limits(mesh: Mesh, images: ImageServer) -> None:
    loopback = Receiver("127.0.0.1")
    try:
        for url, reason in ((f"{loopback.url}", "loopback"), (f"http://[::1]:{loopback.port}/x", "loopback"),
                            (f"http://2130706433:{loopback.port}/x", "loopback"),
                            ("http://169.254.169.254/latest/meta-data/", "link-local"),
                            ("http://[::ffff:169.254.169.254]/", "link-local"),
                            (f"{images.url}/redirect", "redirect"), (f"{images.url}/big", "over the limit"),
                            (f"{images.url}/stall", "ReadTimeout"), ("file:///etc/passwd", "http")):
            reply = run(mesh, "invert", inputs={"image": {"url": url}}, wait_s=5)
            assert reply.status_code == 422, (url, reply.text)
            problem = reply.json()
            assert problem["code"] == "invalid_request" and reason in problem["detail"], (url, problem)
    finally:
        loopback.close()
    assert loopback.received == []


def test_refused_values_and_unknown_inputs(mesh: Mesh) -> None:
    for inputs in ({"width": 0}, {"width": 10**6}, {"height": 5}, {"width": "wide"}):
        reply = run(mesh, "blank", inputs=inputs)
        assert reply.status_code == 422 and reply.json()["errors"][0]["loc"][:2] == ["body", "inputs"], reply.text
    assert run(mesh, "invert", inputs={"image": {"base64": "not base64!"}}).status_code == 422
    assert run(mesh, "invert", inputs={"image": {"base64": base64.b64encode(b"text").decode()}}).status_code == 422
    assert run(mesh, "invert", inputs={"image": {"upload": "a.png", "url": "http://x/"}}).status_code == 422
    assert run(mesh, "nothing-saved").status_code == 404
    bad = {"inputs": [{"node_id": "2", "input": "image"}], "workflow": INVERT}  # a link, not a value
    assert "linked" in mesh.http.put("/v1/workflows/bad", json=bad).json()["detail"]
    for declaration in ({"node_id": "9", "input": "x"}, {"node_id": "1", "input": "nope"},
                        {"node_id": "1", "input": "width", "default": 0}):
        reply = mesh.http.put("/v1/workflows/bad", json={"workflow": BLANK, "inputs": [declaration]})
        assert reply.status_code == 422, reply.text
    assert mesh.http.put("/v1/workflows/Bad Name", json={"workflow": BLANK}).status_code == 422
    assert mesh.http.put("/v1/workflows/bad", json={"workflow": {"1": {"class_type": "EmptyImage", "inputs": []}},
                                                    "inputs": [{"node_id": "1", "input": "width"}]}).status_code == 422
    assert mesh.http.put("/v1/workflows/bad", json={"workflow": BLANK, "inputs": [
        {"node_id": "1", "input": "width", "name": "_private"}]}).status_code == 422
    # public names that are pydantic's own attribute names work like any other
    named = mesh.http.put("/v1/workflows/named", json={"workflow": BLANK, "inputs": [
        {"node_id": "1", "input": "width", "name": "model_config"}, {"node_id": "1", "input": "height", "name": "json"}]})
    assert named.status_code == 201, named.text
    reply = run(mesh, "named", inputs={"model_config": 8, "json": 4}, wait_s=60, images_as="base64")
    assert pixels(base64.b64decode(reply.json()["images"][0]["base64"])).shape == (4, 8, 3), reply.text
    assert run(mesh, "named", inputs={"input_0": 8}).status_code == 422
    assert mesh.http.get("/v1/workflows/bad").status_code == 404


def test_a_run_that_outlasts_its_wait_is_accepted_with_a_job_link(mesh: Mesh) -> None:
    reply = run(mesh, "invert", inputs={"prefix": "later"}, output={"format": "jpeg"})
    assert reply.status_code == 202, reply.text
    accepted = reply.json()
    assert reply.headers["location"] == accepted["status_url"] == f"{mesh.url}/v1/jobs/{accepted['job_id']}"
    assert accepted["images"] == []
    job = mesh.wait(accepted["job_id"])
    assert job["status"] == "completed"
    image = mesh.http.get(f"/v1/jobs/{accepted['job_id']}/images/0", params={"format": "jpeg"})
    assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
    assert mesh.http.get(f"/v1/jobs/{accepted['job_id']}/images/1").status_code == 404


def test_webhooks_carry_output_urls_signed(mesh: Mesh) -> None:
    receiver = Receiver(ALLOWED_HOST)
    try:
        reply = run(mesh, "invert", inputs={"prefix": "hooked"}, webhook_url=receiver.url, wait_s=60)
        assert reply.status_code == 200, reply.text
        until(lambda: receiver.received)
    finally:
        receiver.close()
    [(headers, body)] = receiver.received
    expected = base64.b64encode(hmac.new(SECRET.encode(), f"{headers['webhook-id']}.{headers['webhook-timestamp']}."
                                         .encode() + body, hashlib.sha256).digest()).decode()
    assert headers["webhook-signature"] == "v1," + expected
    payload = json.loads(body)
    [image] = payload["images"]
    assert image["url"].startswith(f"{mesh.url}/view?filename=hooked")
    assert np.array_equal(pixels(mesh.http.get(image["url"]).content), inverted("astronaut.png"))


def test_outputs_go_to_an_allowed_s3_destination_with_the_servers_credentials(mesh: Mesh, s3: Any) -> None:
    reply = run(mesh, "invert", inputs={"prefix": "tos3"}, wait_s=60, images_as="base64",
                output={"format": "webp", "destination": f"s3://{BUCKET}/allowed/batch1"})
    assert reply.status_code == 200, reply.text
    result = reply.json()
    [image] = result["images"]
    key = f"allowed/batch1/{result['job_id']}/{image['filename']}"
    assert image["destination"] == f"s3://{BUCKET}/{key}"
    stored = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    assert stored == base64.b64decode(image["base64"]) and stored[8:12] == b"WEBP"
    # a run that returns before its job ends writes once the job completes
    later = run(mesh, "invert", inputs={"prefix": "tos3later"}, output={"destination": f"s3://{BUCKET}/allowed/b2/"})
    assert later.status_code == 202
    job_id = later.json()["job_id"]
    mesh.wait(job_id)
    prefix = f"allowed/b2/{job_id}/"
    until(lambda: s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents"))
    [stored_later] = s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix)["Contents"]
    assert stored_later["Key"].startswith(prefix + "tos3later") and stored_later["Key"].endswith(".png")
    for destination in (f"s3://{BUCKET}/other/", f"s3://{BUCKET}/allowed/../other/", f"s3://{BUCKET}/allowedx/",
                        "file:///tmp/x/", "/tmp/x"):
        refused = run(mesh, "invert", output={"destination": destination})
        assert refused.status_code == 422 and refused.json()["errors"][0]["loc"][-1] == "destination", destination
    # credentials come from the server only: a request cannot name any
    assert run(mesh, "invert", output={"destination": f"s3://{BUCKET}/allowed/",
                                       "storage_options": {"key": "x"}}).status_code == 422


def test_a_ui_format_workflow_is_converted_with_its_node_ids(mesh: Mesh) -> None:
    template = json.loads((REPO / "ui" / "templates" / "comfymesh-imaging.json").read_text())
    inputs = [{"node_id": "1", "input": "image"}, {"node_id": "2", "input": "width"},
              {"node_id": "2", "input": "height"}, {"node_id": "3", "input": "blur_radius", "name": "blur"}]
    reply = mesh.http.put("/v1/workflows/imaging", json={"workflow": template, "inputs": inputs})
    assert reply.status_code == 201, reply.text
    saved = reply.json()
    assert saved["workflow"]["2"]["class_type"] == "ImageScale"
    kinds = {item["name"]: (item["kind"], item.get("default")) for item in saved["inputs"]}
    assert kinds == {"image": ("image", None), "width": ("integer", 256), "height": ("integer", 256),
                     "blur": ("integer", 3)}
    result = run(mesh, "imaging", inputs={"width": 96, "height": 48, "blur": 1}, wait_s=60, images_as="base64")
    assert result.status_code == 200, result.text
    assert pixels(base64.b64decode(result.json()["images"][0]["base64"])).shape == (48, 96, 3)
    dangling = {**template["nodes"][4], "inputs": [{"name": "image", "type": "IMAGE", "link": 99}]}
    broken = {**template, "links": [[99, 42, 0, 43, 0, "IMAGE"]], "nodes": [template["nodes"][0], dangling]}
    refused = mesh.http.put("/v1/workflows/broken", json={"workflow": broken})
    assert refused.status_code == 422 and refused.json()["errors"][0]["loc"] == ["body", "workflow"], refused.text


def test_saved_workflows_survive_a_gateway_restart_and_can_be_deleted(mesh: Mesh) -> None:
    mesh.restart("gateway")
    assert mesh.http.get("/v1/workflows/invert").json()["inputs"][0]["name"] == "image"
    assert mesh.http.put("/v1/workflows/gone", json={"workflow": BLANK}).status_code == 201
    assert mesh.http.put("/v1/workflows/gone", json={"workflow": BLANK}).status_code == 200
    assert mesh.http.delete("/v1/workflows/gone").status_code == 204
    assert mesh.http.get("/v1/workflows/gone").status_code == 404
    assert "/v1/workflows/gone/run" not in mesh.http.get("/v1/openapi.json").json()["paths"]
