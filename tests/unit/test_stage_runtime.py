"""A stage's group run: exported outputs are written off the node thread, reported once stored."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np

from comfymesh.artifacts import ArtifactStore, decode_value
from comfymesh.catalog import Catalog
from comfymesh.graph.limits import OutputLimits
from comfymesh.stage.node import NodeContext
from comfymesh.stage.runtime import GroupRun
from comfymesh.v1 import stage_pb2


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
    GroupRun(_request(*node_ids), {"EmptyLatentImage": _latent}, Catalog(tmp_path), ArtifactStore(store_url),
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
