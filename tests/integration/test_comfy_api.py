"""ComfyUI's HTTP API on the mesh: startup routes, /prompt errors, queue/history/jobs, files and their refusals."""

from __future__ import annotations

import io
import json
import os
import time
import uuid
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.mesh import SHARED, Mesh

IMAGING = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "example.png"}, "_meta": {"title": "Load Image"}},
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}, "_meta": {"title": "Invert Image"}},
    "3": {"class_type": "SaveImage", "inputs": {"filename_prefix": "api", "images": ["2", 0]},
          "_meta": {"title": "Save Image"}},
}


def fresh_prompt(prefix: str = "api") -> dict[str, Any]:
    prompt = json.loads(json.dumps(IMAGING))
    prompt["3"]["inputs"]["filename_prefix"] = f"{prefix}_{uuid.uuid4().hex[:8]}"
    return prompt


def wait_finished(http: httpx.Client, prompt_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entry = http.get(f"/history/{prompt_id}").json()
        if entry:
            return dict(entry[prompt_id])
        time.sleep(0.05)
    raise TimeoutError(prompt_id)


def png(color: tuple[int, ...], mode: str = "RGB", size: tuple[int, int] = (8, 8)) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, format="PNG")
    return buffer.getvalue()


# startup (§2.1) ------------------------------------------------------------------------------------
@pytest.mark.parametrize("prefix", ["", "/api"])
def test_startup_routes_answer_with_the_reference_shapes(imaging_mesh: Mesh, prefix: str) -> None:
    http = imaging_mesh.http
    features = http.get(f"{prefix}/features").json()
    assert features["supports_preview_metadata"] is True and features["max_upload_size"] > 0
    assert http.get(f"{prefix}/users").json()["storage"] == "server"
    stats = http.get(f"{prefix}/system_stats").json()
    system = stats["system"]
    for key, kind in [("argv", list), ("comfyui_version", str), ("embedded_python", bool), ("os", str),
                      ("python_version", str), ("pytorch_version", str), ("ram_free", int), ("ram_total", int)]:
        assert isinstance(system[key], kind), key
    assert 0 < system["ram_free"] <= system["ram_total"]
    assert isinstance(stats["devices"], list)
    assert all({"name", "type"} <= set(d) for d in stats["devices"])
    assert isinstance(http.get(f"{prefix}/settings").json(), dict)
    listing = http.get(f"{prefix}/userdata", params={"dir": "never-made", "recurse": "true", "full_info": "true"})
    assert listing.status_code == 404 and listing.json()
    assert http.get(f"{prefix}/i18n").json() == {}
    assert http.get(f"{prefix}/extensions").json() == []
    assert http.get(f"{prefix}/global_subgraphs").json() == {}
    info = http.get(f"{prefix}/object_info").json()
    # the nodes of the stages that run (this mesh has no diffusion stage: no KSampler)
    assert {"LoadImage", "ImageInvert", "SaveImage"} <= set(info) and "KSampler" not in info
    assert all(entry["name"] == name for name, entry in info.items())
    assert http.get(f"{prefix}/object_info/ImageInvert").json() == {"ImageInvert": info["ImageInvert"]}
    assert http.get(f"{prefix}/object_info/NoSuchNode").json() == {}
    assert http.get(f"{prefix}/prompt").json() == {"exec_info": {"queue_remaining": 0}}
    assert http.get(f"{prefix}/embeddings").json() == []
    assert "checkpoints" in http.get(f"{prefix}/models").json()
    assert http.get(f"{prefix}/models/nope").status_code == 404


def test_frontend_and_its_first_launch_files(imaging_mesh: Mesh) -> None:
    http = imaging_mesh.http
    index = http.get("/")
    assert index.status_code == 200 and "<html" in index.text and index.headers["cache-control"] == "no-cache"
    assert http.get("/materialdesignicons.min.css").status_code == 200
    jobs = http.get("/api/jobs", params={"status": "completed,failed,cancelled", "limit": 64, "offset": 0}).json()
    assert set(jobs) == {"jobs", "pagination"} and isinstance(jobs["pagination"]["limit"], int)
    categories = http.get("/templates/index.json").json()
    names = [t["name"] for c in categories for t in c["templates"]]
    assert {"comfymesh-sd15-txt2img", "comfymesh-sd15-img2img", "comfymesh-sd15-hires-fix",
            "comfymesh-sdxl-txt2img", "comfymesh-imaging"} <= set(names)
    for name in names:
        workflow = http.get(f"/templates/{name}.json").json()
        assert workflow["nodes"] and workflow["links"] is not None
        assert http.get(f"/templates/{name}-1.webp").headers["content-type"] == "image/webp"
    assert http.get("/api/workflow_templates").json() == {}
    assert http.get("/templates/../pyproject.toml").status_code == 404
    missing = http.get("/api/no/such/route")
    assert missing.status_code == 404 and missing.json()  # JSON, never the static text 404 (§3)
    folders = http.get("/internal/folder_paths").json()
    assert "checkpoints" in folders and http.get("/api/internal/folder_paths").status_code == 404


def test_settings_persist_per_user(imaging_mesh: Mesh) -> None:
    http = imaging_mesh.http
    assert http.post("/api/settings/Comfy.InstalledVersion", content='"1.58.1"').status_code == 200
    assert http.post("/api/settings", json={"Comfy.TutorialCompleted": True}).status_code == 200
    assert http.get("/api/settings/Comfy.InstalledVersion").json() == "1.58.1"
    assert http.get("/api/settings").json() == {"Comfy.InstalledVersion": "1.58.1", "Comfy.TutorialCompleted": True}
    stored = json.loads((imaging_mesh.home / "user" / "default" / "comfy.settings.json").read_text())
    assert stored["Comfy.TutorialCompleted"] is True
    assert http.get("/api/settings", headers={"Comfy-User": "other"}).json() == {}


# /prompt (§5) ---------------------------------------------------------------------------------------
def test_prompt_errors_have_comfyui_shapes(imaging_mesh: Mesh) -> None:
    http = imaging_mesh.http
    reply = http.post("/prompt", json={"client_id": "x"})
    assert reply.status_code == 400
    assert reply.json() == {"error": {"type": "no_prompt", "message": "No prompt provided",
                                      "details": "No prompt provided", "extra_info": {}}, "node_errors": {}}
    reply = http.post("/api/prompt", json={"prompt": {"1": {"class_type": "Nope", "inputs": {}}}})
    assert reply.status_code == 400 and reply.json()["error"]["type"] == "invalid_prompt"
    assert reply.json()["error"]["details"] == "Node ID '#1'"
    reply = http.post("/prompt", json={"prompt": {"1": {"class_type": "ImageInvert", "inputs": {}}}})
    assert reply.json()["error"]["type"] == "prompt_no_outputs"
    prompt = fresh_prompt()
    del prompt["3"]["inputs"]["filename_prefix"]
    reply = http.post("/prompt", json={"prompt": prompt})
    assert reply.status_code == 400
    assert reply.json() == {
        "error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
                  "details": "Required input is missing: filename_prefix", "extra_info": {}},
        "node_errors": {"3": {"errors": [{"type": "required_input_missing", "message": "Required input is missing",
                                          "details": "filename_prefix",
                                          "extra_info": {"input_name": "filename_prefix"}}],
                              "dependent_outputs": ["3"], "class_type": "SaveImage"}}}
    assert http.get("/queue").json() == {"queue_running": [], "queue_pending": []}


def test_prompt_options_and_numbers(imaging_mesh: Mesh) -> None:
    http = imaging_mesh.http
    chosen = f"mine-{uuid.uuid4()}"
    reply = http.post("/prompt", json={"prompt": fresh_prompt(), "prompt_id": chosen, "client_id": "c1",
                                       "extra_data": {"extra_pnginfo": {"workflow": {"id": "wf-1"}},
                                                      "api_key_comfy_org": "secret"}}).json()
    assert reply["prompt_id"] == chosen and isinstance(reply["number"], int) and reply["node_errors"] == {}
    numbered = http.post("/prompt", json={"prompt": fresh_prompt(), "number": 5}).json()
    assert numbered["number"] == 5.0 and isinstance(numbered["number"], float)
    entry = wait_finished(http, chosen)
    _, prompt_id, _, extra, outputs = entry["prompt"]
    assert (prompt_id, outputs, extra["client_id"]) == (chosen, ["3"], "c1")
    assert "api_key_comfy_org" not in extra and extra["create_time"] > 0
    assert entry["status"]["status_str"] == "success" and entry["status"]["completed"] is True
    assert [m[0] for m in entry["status"]["messages"]] == ["execution_start", "execution_cached",
                                                           "execution_success"]
    assert entry["outputs"]["3"]["images"][0]["type"] == "output"
    job = http.get(f"/api/jobs/{chosen}").json()
    assert job["status"] == "completed" and job["workflow_id"] == "wf-1" and job["outputs_count"] == 1
    assert job["preview_output"]["nodeId"] == "3" and job["preview_output"]["mediaType"] == "images"
    assert job["workflow"]["extra_data"]["extra_pnginfo"]["workflow"]["id"] == "wf-1"
    assert job["execution_start_time"] <= job["execution_end_time"]
    assert http.get("/api/jobs", params={"workflow_id": "wf-1"}).json()["jobs"][0]["id"] == chosen
    wait_finished(http, numbered["prompt_id"])


def test_partial_execution_targets_run_only_the_chosen_outputs(imaging_mesh: Mesh) -> None:
    prompt = fresh_prompt()
    prompt["4"] = {"class_type": "SaveImage", "inputs": {"filename_prefix": "other", "images": ["1", 0]}}
    reply = imaging_mesh.http.post("/prompt", json={"prompt": prompt, "partial_execution_targets": ["4"]}).json()
    entry = wait_finished(imaging_mesh.http, reply["prompt_id"])
    assert entry["prompt"][4] == ["4"] and list(entry["outputs"]) == ["4"]


# queue, history, jobs (§6) ----------------------------------------------------------------------------
def test_history_and_jobs_lists(imaging_mesh: Mesh) -> None:
    http = imaging_mesh.http
    ids = [http.post("/prompt", json={"prompt": fresh_prompt("hist")}).json()["prompt_id"] for _ in range(3)]
    for prompt_id in ids:
        wait_finished(http, prompt_id)
    history = http.get("/history").json()
    assert list(history)[-3:] == ids  # oldest first, like ComfyUI's dict
    assert list(http.get("/history", params={"max_items": 2}).json()) == ids[1:]
    total = len(history)
    assert list(http.get("/history", params={"offset": total - 3, "max_items": 1}).json()) == ids[:1]
    assert http.get("/history/unknown-id").json() == {}
    page = http.get("/api/jobs", params={"status": "completed", "limit": 2}).json()
    assert [j["id"] for j in page["jobs"]] == ids[::-1][:2]
    assert page["pagination"]["has_more"] is True and page["pagination"]["total"] >= 3
    assert http.get("/api/jobs", params={"status": "bogus"}).status_code == 400
    assert http.get("/api/jobs", params={"limit": 0}).status_code == 400
    assert http.get("/api/jobs", params={"sort_order": "sideways"}).status_code == 400
    assert http.get("/api/jobs/no-such-job").json() == {"error": "Job not found"}
    assert http.post("/history", json={"delete": [ids[0]]}).status_code == 200
    assert http.get(f"/history/{ids[0]}").json() == {}
    assert ids[1] in http.get("/history").json()
    assert http.post("/api/jobs/no-such-job/cancel").status_code == 200  # idempotent no-op
    assert http.post("/api/jobs/cancel", json={"job_ids": [ids[1]]}).json() == {"cancelled": []}
    assert http.post("/interrupt").status_code == 200
    assert http.post("/free", json={"unload_models": True, "free_memory": True}).status_code == 200
    assert http.post("/history", json={"clear": True}).status_code == 200
    assert http.get("/history").json() == {}


# files (§7) ------------------------------------------------------------------------------------------
def test_uploads_appear_in_load_image_and_dedupe(imaging_mesh: Mesh) -> None:
    http = imaging_mesh.http
    name = f"up_{uuid.uuid4().hex[:6]}.png"
    first = http.post("/upload/image", files={"image": (name, png((255, 0, 0)), "image/png")}).json()
    assert first == {"name": name, "subfolder": "", "type": "input"}
    same = http.post("/api/upload/image", files={"image": (name, png((255, 0, 0)), "image/png")}).json()
    assert same["name"] == name  # identical content: no copy
    other = http.post("/upload/image", files={"image": (name, png((0, 255, 0)), "image/png")}).json()
    assert other["name"] == name.replace(".png", " (1).png")
    choices = http.get("/object_info/LoadImage").json()["LoadImage"]["input"]["required"]["image"][0]
    assert name in choices and other["name"] in choices
    pasted = http.post("/upload/image", files={"image": ("p.png", png((1, 2, 3)), "image/png")},
                       data={"subfolder": "pasted"}).json()
    assert pasted == {"name": "p.png", "subfolder": "pasted", "type": "input"}
    prompt = fresh_prompt()
    prompt["1"]["inputs"]["image"] = "pasted/p.png"  # LoadImage takes subfolder paths beyond its list
    reply = http.post("/prompt", json={"prompt": prompt}).json()
    assert wait_finished(http, reply["prompt_id"])["status"]["status_str"] == "success"
    view = http.get("/view", params={"filename": "p.png", "subfolder": "pasted", "type": "input"})
    assert view.content == png((1, 2, 3))


def test_mask_upload_copies_alpha_into_the_original(imaging_mesh: Mesh) -> None:
    http = imaging_mesh.http
    base = f"base_{uuid.uuid4().hex[:6]}.png"
    http.post("/upload/image", files={"image": (base, png((10, 20, 30)), "image/png")})
    mask = png((0, 0, 0, 77), mode="RGBA")
    reply = http.post("/upload/mask", files={"image": (f"mask_{base}", mask, "image/png")},
                      data={"original_ref": json.dumps({"filename": base, "subfolder": "", "type": "input"})}).json()
    result = Image.open(io.BytesIO(http.get("/view", params={"filename": reply["name"], "type": "input"}).content))
    assert result.mode == "RGBA" and result.getpixel((0, 0)) == (10, 20, 30, 77)


def test_view_variants(imaging_mesh: Mesh) -> None:
    http = imaging_mesh.http
    name = f"rgba_{uuid.uuid4().hex[:6]}.png"
    http.post("/upload/image", files={"image": (name, png((200, 100, 50, 128), mode="RGBA"), "image/png")})
    annotated = http.get("/view", params={"filename": f"{name} [input]", "type": "output"})
    assert annotated.status_code == 200 and annotated.headers["content-type"] == "image/png"
    alpha = Image.open(io.BytesIO(http.get("/view", params={"filename": name, "type": "input",
                                                            "channel": "a"}).content))
    assert alpha.getpixel((0, 0)) == (0, 0, 0, 128)
    rgb = Image.open(io.BytesIO(http.get("/view", params={"filename": name, "type": "input",
                                                          "channel": "rgb"}).content))
    assert rgb.mode == "RGB" and rgb.getpixel((0, 0)) == (200, 100, 50)
    preview = http.get("/view", params={"filename": name, "type": "input", "preview": "jpeg;50",
                                        "channel": "rgb"})
    assert preview.headers["content-type"] == "image/jpeg"
    assert http.get("/view", params={"filename": name, "type": "input", "preview": "webp;90"}).headers[
        "content-type"] == "image/webp"
    # only the base name counts: folders belong in `subfolder`
    assert http.get("/view", params={"filename": f"any/{name}", "type": "input"}).status_code == 200


@pytest.fixture
def outside_secret(imaging_mesh: Mesh) -> str:
    """A file beside the data folders, and symlinks in input/ and user/ that point at it."""
    secret = imaging_mesh.home / "secret.png"
    secret.write_bytes(png((9, 9, 9)))
    for link in (imaging_mesh.home / "input" / "link.png", imaging_mesh.home / "user" / "default" / "link.json"):
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            os.symlink(secret, link)
    return secret.name


@pytest.mark.parametrize(("params", "statuses"), [
    ({"filename": "../secret.png", "type": "input"}, {400}),
    ({"filename": "/etc/passwd", "type": "input"}, {400}),
    ({"filename": "secret.png", "subfolder": "..", "type": "input"}, {403}),
    ({"filename": "secret.png", "subfolder": "../", "type": "output"}, {403}),
    ({"filename": "passwd", "subfolder": "/etc", "type": "input"}, {403}),
    ({"filename": "secret.png", "subfolder": "..%2F", "type": "input"}, {403, 404}),
    ({"filename": "link.png", "type": "input"}, {403}),
    ({"filename": "x.png", "type": "models"}, {400}),
    ({"filename": "", "type": "input"}, {400}),
])
def test_view_refuses_paths_leaving_its_folder(imaging_mesh: Mesh, outside_secret: str,
                                               params: dict[str, str], statuses: set[int]) -> None:
    reply = imaging_mesh.http.get("/view", params=params)
    assert reply.status_code in statuses, (params, reply.status_code)
    assert reply.content != png((9, 9, 9))


@pytest.mark.parametrize("fields", [
    {"subfolder": ".."}, {"subfolder": "../output"}, {"subfolder": "/tmp"}, {"type": "models"},
])
def test_upload_refuses_paths_leaving_its_folder(imaging_mesh: Mesh, fields: dict[str, str]) -> None:
    reply = imaging_mesh.http.post("/upload/image", files={"image": ("escape.png", png((1, 1, 1)), "image/png")},
                                   data=fields)
    assert reply.status_code == 400
    home = imaging_mesh.home
    assert not [p for p in (home, home / "output", home.parent, home.parent.parent) if (p / "escape.png").exists()]


def test_upload_refuses_escaping_file_names(imaging_mesh: Mesh) -> None:
    for name in ("../escape.png", "..", "/tmp/escape.png"):
        raw = (b'--b\r\nContent-Disposition: form-data; name="image"; filename="' + name.encode()
               + b'"\r\nContent-Type: image/png\r\n\r\n' + png((1, 1, 1)) + b"\r\n--b--\r\n")
        reply = imaging_mesh.http.post("/upload/image", content=raw,
                                       headers={"content-type": "multipart/form-data; boundary=b"})
        assert reply.status_code == 400, name
    assert not (imaging_mesh.home / "escape.png").exists()


def test_userdata_round_trip_with_encoded_slashes(imaging_mesh: Mesh) -> None:
    http = imaging_mesh.http
    body = json.dumps({"nodes": [], "links": []})
    saved = http.post("/api/userdata/workflows%2Fmine.json", params={"overwrite": "false"}, content=body)
    assert saved.status_code == 200 and saved.json() == "workflows/mine.json"
    assert http.post("/api/userdata/workflows%2Fmine.json", params={"overwrite": "false"},
                     content=body).status_code == 409
    assert http.get("/api/userdata/workflows%2Fmine.json").text == body
    listing = http.get("/api/userdata", params={"dir": "workflows", "recurse": "true", "full_info": "true"}).json()
    assert [item["path"] for item in listing] == ["mine.json"]
    moved = http.post("/api/userdata/workflows%2Fmine.json/move/workflows%2Fsub%2Frenamed.json",
                      params={"overwrite": "false", "full_info": "true"})
    assert moved.status_code == 200 and moved.json()["path"] == "workflows/sub/renamed.json"
    assert http.get("/api/userdata", params={"dir": "workflows", "recurse": "true", "split": "true"}).json() == [
        ["sub/renamed.json", "sub", "renamed.json"]]
    tree = http.get("/api/v2/userdata", params={"path": "workflows"}).json()
    assert [(e["path"], e["type"]) for e in tree] == [("workflows/sub", "directory"),
                                                      ("workflows/sub/renamed.json", "file")]
    assert http.delete("/api/userdata/workflows%2Fsub%2Frenamed.json").status_code == 204
    assert http.delete("/api/userdata/workflows%2Fsub%2Frenamed.json").status_code == 404
    assert (imaging_mesh.home / "user" / "default" / "workflows").is_dir()


@pytest.mark.parametrize("path", [
    "/api/userdata/..%2F..%2Fpyproject.toml", "/api/userdata/%2E%2E%2Fcomfymesh.db",
    "/api/userdata/%252E%252E%252Fcomfymesh.db", "/api/userdata/%2Fetc%2Fpasswd", "/api/userdata/link.json",
])
def test_userdata_refuses_paths_leaving_the_user_folder(imaging_mesh: Mesh, outside_secret: str, path: str) -> None:
    http = imaging_mesh.http
    assert http.get(path).status_code in (403, 404)
    assert http.post(path, content=b"x").status_code in (403, 404)
    assert http.delete(path).status_code in (403, 404)
    listing = http.get("/api/userdata", params={"dir": "../"})
    assert listing.status_code in (403, 404)
    assert (imaging_mesh.home / "secret.png").read_bytes() == png((9, 9, 9))


# an unmodified ComfyUI client library from PyPI ------------------------------------------------------
def test_comfy_api_simplified_client_runs_a_workflow(imaging_mesh: Mesh) -> None:
    from comfy_api_simplified import ComfyApiWrapper, ComfyWorkflowWrapper

    api = ComfyApiWrapper(imaging_mesh.url)
    workflow = ComfyWorkflowWrapper(fresh_prompt("lib"))
    workflow.set_node_param("Load Image", "image", "coffee.png")
    images = api.queue_and_wait_images(workflow, "Save Image")
    (filename, data), = images.items()
    assert filename.startswith("lib_")
    result = Image.open(io.BytesIO(data)).convert("RGB")
    source = Image.open(SHARED / "data" / "coffee.png").convert("RGB")
    assert result.size == source.size
    assert result.getpixel((10, 10)) == tuple(255 - c for c in source.getpixel((10, 10)))
    assert "ImageInvert" in api.get_object_info("ImageInvert")
    assert api.get_system_stats()["system"]["python_version"]
    assert api.get_queue() == {"queue_running": [], "queue_pending": []}


def test_long_histories_stream_past_the_message_bound(imaging_mesh: Mesh) -> None:
    """40 jobs carrying 3 KB workflows: more than one 64 KiB gRPC message can hold, listed in full."""
    workflow = {"nodes": [{"id": i, "title": "x" * 60} for i in range(50)], "links": []}
    ids = []
    for i in range(40):
        reply = imaging_mesh.http.post("/prompt", json={"prompt": fresh_prompt(f"long{i}"),
                                                        "extra_data": {"extra_pnginfo": {"workflow": workflow}}})
        assert reply.status_code == 200, reply.text
        ids.append(reply.json()["prompt_id"])
    for prompt_id in ids:
        wait_finished(imaging_mesh.http, prompt_id)
    history = imaging_mesh.http.get("/history")
    assert history.status_code == 200 and set(ids) <= set(history.json())
    jobs = imaging_mesh.http.get("/api/jobs", params={"limit": 100})
    assert jobs.status_code == 200
    assert set(ids) <= {job["id"] for job in jobs.json()["jobs"]}
