"""ComfyUI's websocket protocol against the mesh, driven as ComfyUI's own API scripts drive it.

`run_prompt` follows ComfyUI's `websockets_api_example.py` pattern unmodified: pick a client id,
connect `/ws?clientId=`, POST `/prompt`, read messages until `executing` with `node: null`, then
GET `/history/{id}` and `/view` every image.
"""

from __future__ import annotations

import json
import struct
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import websocket  # websocket-client, what ComfyUI's examples use

from tests.mesh import SHARED, Mesh

IMAGING = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ws", "images": ["2", 0]}},
}


def queue_prompt(server: str, prompt: dict[str, Any], client_id: str,
                 extra_data: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"prompt": prompt, "client_id": client_id}
    if extra_data is not None:
        body["extra_data"] = extra_data
    data = json.dumps(body).encode("utf-8")
    request = urllib.request.Request(f"http://{server}/prompt", data=data)
    return dict(json.loads(urllib.request.urlopen(request).read()))


def get_history(server: str, prompt_id: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{server}/history/{prompt_id}") as response:
        return dict(json.loads(response.read()))


def get_image(server: str, filename: str, subfolder: str, folder_type: str) -> bytes:
    query = urllib.parse.urlencode({"filename": filename, "subfolder": subfolder, "type": folder_type})
    with urllib.request.urlopen(f"http://{server}/view?{query}") as response:
        return bytes(response.read())


def read_until_done(ws: websocket.WebSocket, prompt_id: str) -> list[dict[str, Any]]:
    """Every JSON message (and binary frames as {'binary': bytes}) until this prompt's `executing null`."""
    messages: list[dict[str, Any]] = []
    while True:
        out = ws.recv()
        if isinstance(out, str):
            message = json.loads(out)
            messages.append(message)
            if message["type"] == "executing":
                data = message["data"]
                if data["node"] is None and data.get("prompt_id") == prompt_id:
                    return messages
        else:
            messages.append({"type": "binary", "binary": out})


def run_prompt(server: str, prompt: dict[str, Any]) -> tuple[str, list[dict[str, Any]], dict[str, list[bytes]]]:
    client_id = str(uuid.uuid4())
    ws = websocket.WebSocket()
    ws.connect(f"ws://{server}/ws?clientId={client_id}", timeout=60)
    try:
        prompt_id = queue_prompt(server, prompt, client_id)["prompt_id"]
        messages = read_until_done(ws, prompt_id)
    finally:
        ws.close()
    history = get_history(server, prompt_id)[prompt_id]
    images: dict[str, list[bytes]] = {}
    for node_id, node_output in history["outputs"].items():
        images[node_id] = [get_image(server, i["filename"], i["subfolder"], i["type"])
                           for i in node_output.get("images", [])]
    return prompt_id, messages, images


def server_of(mesh: Mesh) -> str:
    return mesh.url.removeprefix("http://")


def kinds(messages: list[dict[str, Any]], prompt_id: str) -> list[str]:
    """Message types of one prompt (status broadcasts included), progress_state left out."""
    return [m["type"] for m in messages if m["type"] not in ("progress_state", "binary")
            and (m["type"] == "status" or m["data"].get("prompt_id") in (prompt_id, None))]


def test_api_script_runs_a_prompt_and_fetches_its_image(imaging_mesh: Mesh) -> None:
    prompt = json.loads(json.dumps(IMAGING))
    prompt["3"]["inputs"]["filename_prefix"] = f"ws_{uuid.uuid4().hex[:6]}"
    prompt_id, messages, images = run_prompt(server_of(imaging_mesh), prompt)
    order = kinds(messages, prompt_id)
    assert order[0] == "status" and "sid" in messages[0]["data"]
    assert order[-3:] == ["execution_success", "status", "executing"], order
    start = order.index("execution_start")
    assert order[start + 1] == "execution_cached"
    executing = [m["data"]["node"] for m in messages if m["type"] == "executing" and m["data"]["node"]]
    assert executing == ["1", "2", "3"]
    executed = [m["data"] for m in messages if m["type"] == "executed"]
    assert [e["node"] for e in executed] == ["3"]
    assert executed[0]["output"]["images"][0]["type"] == "output"
    assert images["3"][0][:8] == b"\x89PNG\r\n\x1a\n"
    status = messages[-2]["data"]["status"]["exec_info"]["queue_remaining"]
    assert status == 0


def test_cached_rerun_lists_cached_nodes_and_replays_outputs(imaging_mesh: Mesh) -> None:
    prompt = json.loads(json.dumps(IMAGING))
    prompt["3"]["inputs"]["filename_prefix"] = f"cached_{uuid.uuid4().hex[:6]}"
    server = server_of(imaging_mesh)
    first_id, _, first_images = run_prompt(server, prompt)
    second_id, messages, second_images = run_prompt(server, prompt)
    assert first_id != second_id
    cached = next(m["data"] for m in messages if m["type"] == "execution_cached")
    assert sorted(cached["nodes"]) == ["1", "2", "3"]
    assert not [m for m in messages if m["type"] == "executing" and m["data"]["node"]]
    executed = [m["data"] for m in messages if m["type"] == "executed"]
    assert [e["node"] for e in executed] == ["3"]
    assert second_images == first_images
    assert "execution_success" in kinds(messages, second_id)


def _slow_prompt(tag: str, size: int = 256, blurs: int = 2) -> dict[str, Any]:
    """A chain of wide blurs (about 1.3 s each at 256 px on one core): a node stays running a while."""
    prompt: dict[str, Any] = {"1": {"class_type": "EmptyImage", "inputs": {
        "width": size, "height": size, "batch_size": 1, "color": int(uuid.uuid4().int % 0xFFFFFF)}}}
    for i in range(2, 2 + blurs):
        prompt[str(i)] = {"class_type": "ImageBlur", "inputs": {"image": [str(i - 1), 0], "blur_radius": 31,
                                                                  "sigma": 10.0}}
    prompt[str(2 + blurs)] = {"class_type": "SaveImage", "inputs": {"images": [str(1 + blurs), 0],
                                                                    "filename_prefix": tag}}
    return prompt


def test_interrupt_stops_the_running_prompt_and_empties_the_queue(imaging_mesh: Mesh) -> None:
    server, client_id = server_of(imaging_mesh), uuid.uuid4().hex
    ws = websocket.WebSocket()
    ws.connect(f"ws://{server}/ws?clientId={client_id}", timeout=60)
    try:
        prompt_id = queue_prompt(server, _slow_prompt("interrupt", blurs=4), client_id)["prompt_id"]
        messages: list[dict[str, Any]] = []
        while True:
            message = json.loads(ws.recv())
            messages.append(message)
            if message["type"] == "executing" and message["data"]["node"] == "2":
                break
        imaging_mesh.http.post("/interrupt", json={"prompt_id": prompt_id})
        messages += read_until_done(ws, prompt_id)
    finally:
        ws.close()
    order = kinds(messages, prompt_id)
    assert order[-3:] == ["execution_interrupted", "status", "executing"], order
    assert "execution_success" not in order and "execution_error" not in order
    interrupted = next(m["data"] for m in messages if m["type"] == "execution_interrupted")
    assert interrupted["prompt_id"] == prompt_id and interrupted["node_type"] == "ImageBlur"
    assert messages[-2]["data"]["status"]["exec_info"]["queue_remaining"] == 0
    assert imaging_mesh.http.get("/queue").json() == {"queue_running": [], "queue_pending": []}
    entry = imaging_mesh.http.get(f"/history/{prompt_id}").json()[prompt_id]
    assert entry["status"]["status_str"] == "error"
    assert entry["status"]["messages"][-1][0] == "execution_interrupted"
    job = imaging_mesh.http.get(f"/api/jobs/{prompt_id}").json()
    assert job["status"] == "cancelled"


def test_queue_history_and_jobs_return_the_prompt_as_submitted(imaging_mesh: Mesh) -> None:
    """Titles in `_meta` and values as sent (a number where a STRING goes, which validation coerces)."""
    prompt = _slow_prompt("", blurs=1)
    prompt["3"]["inputs"]["filename_prefix"] = 7
    for node_id, node in prompt.items():
        node["_meta"] = {"title": f"My {node['class_type']} {node_id}"}
    http = imaging_mesh.http
    prompt_id = http.post("/prompt", json={"prompt": prompt}).json()["prompt_id"]
    deadline, queued = time.monotonic() + 30, []
    while not queued and time.monotonic() < deadline:
        queue = http.get("/queue").json()
        queued = [entry for entry in queue["queue_running"] + queue["queue_pending"] if entry[1] == prompt_id]
    assert queued, "the prompt never showed in /queue"
    assert queued[0][2] == prompt
    deadline, entry = time.monotonic() + 60, {}
    while not entry and time.monotonic() < deadline:
        entry = http.get(f"/history/{prompt_id}").json().get(prompt_id, {})
        time.sleep(0.05)  # poll interval
    assert entry["prompt"][2] == prompt and entry["status"]["status_str"] == "success"
    assert http.get(f"/api/jobs/{prompt_id}").json()["workflow"]["prompt"] == prompt


def test_failed_prompt_sends_execution_error(imaging_mesh: Mesh) -> None:
    prompt = json.loads(json.dumps(IMAGING))
    prompt["3"]["inputs"]["filename_prefix"] = "../escape"  # leaving output is an execution error
    prompt_id, messages, _ = run_prompt(server_of(imaging_mesh), prompt)
    order = kinds(messages, prompt_id)
    assert order[-3:] == ["execution_error", "status", "executing"], order
    error = next(m["data"] for m in messages if m["type"] == "execution_error")
    assert error["node_id"] == "3" and error["node_type"] == "SaveImage"
    assert error["exception_message"]
    assert set(error["executed"]) <= {"1", "2"}  # nodes 1 and 2 may come from the cache instead


def test_reconnect_with_same_client_id_keeps_receiving(imaging_mesh: Mesh) -> None:
    server, client_id = server_of(imaging_mesh), uuid.uuid4().hex
    first = websocket.WebSocket()
    first.connect(f"ws://{server}/ws?clientId={client_id}", timeout=60)
    hello = json.loads(first.recv())
    assert hello["type"] == "status" and hello["data"]["sid"] == client_id
    first.close()
    prompt_id = queue_prompt(server, _slow_prompt("reconnect"), client_id)["prompt_id"]
    time.sleep(0.3)
    second = websocket.WebSocket()
    second.connect(f"ws://{server}/ws?clientId={client_id}", timeout=60)
    try:
        assert json.loads(second.recv())["data"]["sid"] == client_id
        messages = read_until_done(second, prompt_id)
    finally:
        second.close()
    assert [m for m in messages if m["type"] == "executing" and m["data"].get("node") not in (None,)]
    assert "execution_success" in kinds(messages, prompt_id)


def test_feature_flags_answered_once_and_previews_framed() -> None:
    from comfymesh.gateway.comfy.translate import preview_frame

    plain = preview_frame("5", "p", "JPEG", b"\xff\xd8jpeg", with_metadata=False)
    assert struct.unpack(">II", plain[:8]) == (1, 1) and plain[8:] == b"\xff\xd8jpeg"
    rich = preview_frame("5", "p", "PNG", b"\x89PNG", with_metadata=True)
    kind, length = struct.unpack(">II", rich[:8])
    metadata = json.loads(rich[8:8 + length])
    assert kind == 4 and metadata["node_id"] == "5" and metadata["image_type"] == "image/png"
    assert rich[8 + length:] == b"\x89PNG"


def test_handshake_feature_flags(imaging_mesh: Mesh) -> None:
    ws = websocket.WebSocket()
    ws.connect(f"ws://{server_of(imaging_mesh)}/ws", timeout=30)
    try:
        hello = json.loads(ws.recv())
        assert hello["type"] == "status" and len(hello["data"]["sid"]) == 32
        ws.send(json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": True}}))
        reply = json.loads(ws.recv())
        assert reply["type"] == "feature_flags" and reply["data"]["supports_preview_metadata"] is True
        ws.send(json.dumps({"type": "feature_flags", "data": {}}))  # only the first message is answered
        ws.settimeout(0.5)
        with pytest.raises(websocket.WebSocketTimeoutException):
            ws.recv()
    finally:
        ws.close()


def test_prompt_without_client_id_broadcasts_nothing_private(imaging_mesh: Mesh) -> None:
    watcher = websocket.WebSocket()
    watcher.connect(f"ws://{server_of(imaging_mesh)}/ws", timeout=30)
    seen: list[dict[str, Any]] = []
    try:
        watcher.recv()
        prompt = json.loads(json.dumps(IMAGING))
        prompt["3"]["inputs"]["filename_prefix"] = f"anon_{uuid.uuid4().hex[:6]}"
        reply = imaging_mesh.http.post("/prompt", json={"prompt": prompt}).json()
        done = threading.Event()
        watcher.settimeout(10)
        while not done.is_set():
            message = json.loads(watcher.recv())
            seen.append(message)
            job = imaging_mesh.http.get(f"/api/jobs/{reply['prompt_id']}").json()
            if job["status"] == "completed" and message["type"] == "status" \
                    and message["data"]["status"]["exec_info"]["queue_remaining"] == 0:
                done.set()
    finally:
        watcher.close()
    assert {m["type"] for m in seen} <= {"status", "progress_state", "progress"}


@pytest.fixture(scope="module")
def diffusion_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    from comfymesh.diffusion.models.tiny_checkpoint import make_tiny_checkpoint

    home = tmp_path_factory.mktemp("home")
    mesh = Mesh(home, stages=("imaging", "diffusion"))
    make_tiny_checkpoint(home / "models" / "checkpoints" / "tiny_sd15.safetensors", "sd15")
    try:
        yield mesh.start()
    finally:
        mesh.stop()


def tiny_txt2img(prefix: str = "ComfyUI") -> dict[str, Any]:
    """The SD1.5 txt2img graph on the tiny checkpoint (3 steps, 64x64, a fresh seed: nothing cached), with
    ComfyUI's `_meta` titles."""
    prompt: dict[str, Any] = json.loads((SHARED / "workflows" / "txt2img_sd15.json").read_text())
    prompt["4"]["inputs"]["ckpt_name"] = "tiny_sd15.safetensors"
    prompt["3"]["inputs"].update(steps=3, seed=uuid.uuid4().int % 2**48)
    prompt["5"]["inputs"].update(width=64, height=64)
    prompt["9"]["inputs"]["filename_prefix"] = prefix
    for node in prompt.values():
        node["_meta"] = {"title": "Save Image" if node["class_type"] == "SaveImage" else node["class_type"]}
    return prompt


def run_diffusion(mesh: Mesh, extra_data: dict[str, Any] | None) -> tuple[str, list[dict[str, Any]]]:
    """Run tiny_txt2img through /ws as a client that asked for preview metadata; every message it got."""
    server, client_id = server_of(mesh), uuid.uuid4().hex
    ws = websocket.WebSocket()
    ws.connect(f"ws://{server}/ws?clientId={client_id}", timeout=120)
    try:
        ws.recv()
        ws.send(json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": True}}))
        prompt_id = queue_prompt(server, tiny_txt2img(), client_id, extra_data)["prompt_id"]
        return prompt_id, read_until_done(ws, prompt_id)
    finally:
        ws.close()


def test_sampler_progress_and_previews_reach_the_client(diffusion_mesh: Mesh) -> None:
    prompt_id, messages = run_diffusion(diffusion_mesh, {"preview_method": "auto"})
    progress = [m["data"] for m in messages if m["type"] == "progress"]
    assert [(p["value"], p["max"], p["node"]) for p in progress] == [(1, 3, "3"), (2, 3, "3"), (3, 3, "3")]
    previews = [m["binary"] for m in messages if m["type"] == "binary"]
    assert previews, "no preview frames"
    kind, length = struct.unpack(">II", previews[0][:8])
    metadata = json.loads(previews[0][8:8 + length])
    assert kind == 4 and metadata["node_id"] == "3" and metadata["prompt_id"] == prompt_id
    assert "execution_success" in kinds(messages, prompt_id)
    devices = diffusion_mesh.http.get("/system_stats").json()["devices"]
    assert devices and devices[0]["type"] in ("cpu", "cuda", "mps") and devices[0]["vram_total"] > 0


def test_no_previews_unless_asked(diffusion_mesh: Mesh) -> None:
    """ComfyUI sends no previews unless its preview method is set (COMFYMESH_PREVIEW_METHOD: none)."""
    for extra_data in (None, {"preview_method": "default"}, {"preview_method": "none"}):
        prompt_id, messages = run_diffusion(diffusion_mesh, extra_data)
        assert "execution_success" in kinds(messages, prompt_id)
        assert [m for m in messages if m["type"] == "progress"], "the sampler's progress still comes"
        assert not [m for m in messages if m["type"] == "binary"], f"previews sent for {extra_data}"


def test_bad_preview_method_is_a_comfy_400(diffusion_mesh: Mesh) -> None:
    reply = diffusion_mesh.http.post("/prompt", json={"prompt": tiny_txt2img(),
                                                      "extra_data": {"preview_method": "fancy"}})
    assert reply.status_code == 400
    body = reply.json()
    assert body["error"]["type"] == "invalid_prompt" and "preview_method" in body["error"]["details"]
    assert body["node_errors"] == {}


def test_comfy_api_simplified_gets_one_image_per_save_image(diffusion_mesh: Mesh) -> None:
    """It reads every binary frame as an output image: previews would come back as extra "images"."""
    from comfy_api_simplified import ComfyApiWrapper, ComfyWorkflowWrapper

    api = ComfyApiWrapper(diffusion_mesh.url)
    workflow = ComfyWorkflowWrapper(tiny_txt2img(prefix="simplified"))
    images = api.queue_and_wait_images(workflow, "Save Image")
    (filename, data), = images.items()
    assert filename.startswith("simplified_") and data[:8] == b"\x89PNG\r\n\x1a\n"
