"""A stage's group run: exported outputs are written off the node thread, reported once stored."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np

from comfymesh.artifacts import ArtifactStore, decode_value
from comfymesh.graph.limits import OutputLimits
from comfymesh.stage.node import NodeContext
from comfymesh.stage.runtime import GroupRun, data_relative
from comfymesh.v1 import stage_pb2
from tests.catalogs import builtin_catalog


def _latent(ctx: NodeContext, width: int, height: int, batch_size: int) -> tuple[Any, ...]:
    return ({"samples": np.full((batch_size, 4, height // 8, width // 8), 0.5, np.float32)},)


def _request(*node_ids: str) -> stage_pb2.StageRequest:
    request = stage_pb2.StageRequest(job_id="job-1", group_id="g", export_node_ids=list(node_ids))
    for node_id in node_ids:
        request.nodes.add(node_id=node_id, class_type="EmptyLatentImage",
                          literal_inputs_json=json.dumps({"width": 64, "height": 32, "batch_size": 2}))
    return request


def _run(tmp_path: Path, store_url: str, *node_ids: str) -> list[stage_pb2.StageEvent]:
    events: list[stage_pb2.StageEvent] = []
    GroupRun(_request(*node_ids), {"EmptyLatentImage": _latent}, builtin_catalog(tmp_path), ArtifactStore(store_url),
             tmp_path, events.append, threading.Event(), OutputLimits(max_pixels=2**24, max_batch=64)).run()
    return events


def test_every_export_is_stored_and_reported_before_the_call_ends(tmp_path: Path) -> None:
    store = tmp_path / "artifacts"
    events = _run(tmp_path, str(store), "1", "2")
    kinds = [event.WhichOneof("event") for event in events]
    assert sorted(kinds) == ["done", "done", "started", "started"]
    for event in events:
        if event.WhichOneof("event") == "done":
            (value,) = event.done.outputs
            latent = decode_value(value, ArtifactStore(str(store)))  # a fresh store: read from disk
            assert latent["samples"].shape == (2, 4, 4, 8) and float(latent["samples"].mean()) == 0.5


def test_a_failed_write_fails_its_node(tmp_path: Path) -> None:
    blocked = tmp_path / "artifacts"
    blocked.mkdir()
    (blocked / "tensors").write_text("a file where the tensor folder must go")  # fails even for root
    events = _run(tmp_path, str(blocked), "7")
    assert [event.WhichOneof("event") for event in events] == ["started", "failure"]
    assert events[-1].failure.node_id == "7"


def test_an_output_over_the_limits_fails_its_node_before_anything_uses_it(tmp_path: Path) -> None:
    store = tmp_path / "artifacts"
    events: list[stage_pb2.StageEvent] = []
    # a batch of 2 latents of 64x32 image pixels: 4096 pixels, over a limit of 4000
    GroupRun(_request("1", "2"), {"EmptyLatentImage": _latent}, builtin_catalog(tmp_path), ArtifactStore(str(store)),
             tmp_path, events.append, threading.Event(), OutputLimits(max_pixels=4000, max_batch=64)).run()
    assert [event.WhichOneof("event") for event in events] == ["started", "failure"]
    failure = events[-1].failure
    assert failure.node_id == "1" and failure.non_retryable and failure.type == "invalid_input"
    assert "EmptyLatentImage (node 1)" in failure.message and "64x32x2 = 4096 pixels" in failure.message
    assert "bigger than max of 4000 (COMFYMESH_MAX_PIXELS)" in failure.message
    assert not store.exists()  # nothing was exported


def test_failure_messages_name_files_relative_to_the_data_root(tmp_path: Path) -> None:
    def unreadable(ctx: NodeContext, **inputs: Any) -> tuple[Any, ...]:
        raise PermissionError(13, "Permission denied", str(ctx.home / "input" / "x.png"))

    events: list[stage_pb2.StageEvent] = []
    request = stage_pb2.StageRequest(job_id="job-1", group_id="g")
    request.nodes.add(node_id="4", class_type="Unreadable")
    GroupRun(request, {"Unreadable": unreadable}, builtin_catalog(tmp_path), ArtifactStore(str(tmp_path / "a")),
             tmp_path, events.append, threading.Event(), OutputLimits(max_pixels=2**24, max_batch=64)).run()
    assert events[-1].failure.message == "PermissionError: [Errno 13] Permission denied: 'input/x.png'"


def test_data_relative_keeps_urls_and_fractions() -> None:
    home = Path("/srv/my data")
    assert data_relative("cannot open '/srv/my data/models/vae/x.pt'", home) == "cannot open 'models/vae/x.pt'"
    assert data_relative("[Errno 2] No such file: '/usr/lib/x86_64/libfoo.so'", home) == \
        "[Errno 2] No such file: 'libfoo.so'"
    kept = "posted to http://host/v1/jobs, 1/255 off, width/height, file /tmp"
    assert data_relative(kept, home) == kept
