"""The line a finished job leaves in the orchestrator's log, and logs that are text on a terminal, JSON elsewhere."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from comfymesh.logs import log_fields, setup_logging
from comfymesh.orchestrator.job_log import finished_line


def test_a_completed_job_says_where_its_time_went_by_stage() -> None:
    message, fields = finished_line("j1", "completed", created=100.0, began=100.25, ended=102.0,
                                    stage_seconds={"imaging": 0.1234, "diffusion": 1.5})
    assert message == "job j1 completed in 1.75 s (queued 0.25 s; diffusion 1.50 s, imaging 0.12 s)"
    assert fields == {"job": "j1", "status": "completed", "queued_s": 0.25, "run_s": 1.75,
                      "diffusion_s": 1.5, "imaging_s": 0.123}


def test_a_failed_job_names_its_node_and_one_that_never_reached_a_stage_has_no_stage_times() -> None:
    message, fields = finished_line("j2", "failed", 10.0, 11.0, 11.5, {"diffusion": 0.4},
                                    {"node_id": "4", "node_type": "CheckpointLoaderSimple", "message": "bad file"})
    assert message.endswith("at node 4 (CheckpointLoaderSimple)") and fields["node"] == "4"
    message, fields = finished_line("j3", "failed", 10.0, 11.0, 11.0, {}, {"node_id": "", "message": "no stage"})
    assert message == "job j3 failed in 0.00 s (queued 1.00 s)" and "node" not in fields


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


def _log_to(stream: object, monkeypatch: pytest.MonkeyPatch) -> None:
    """Log one finished-job line with `stream` as stderr, then flush it (a new setup stops the old listener)."""
    monkeypatch.setattr(sys, "stderr", stream)
    setup_logging("orchestrator")
    logging.getLogger("comfymesh.orchestrator").info("job j1 completed", extra=log_fields(job="j1", run_s=1.5))
    monkeypatch.setattr(sys, "stderr", open(os.devnull, "w"))  # noqa: SIM115 (the last listener keeps it)
    setup_logging("orchestrator")


def test_logs_are_text_on_a_terminal_and_json_otherwise(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         restore_logging: None) -> None:
    primary, secondary = os.openpty()
    with open(secondary, "w") as terminal:
        _log_to(terminal, monkeypatch)
        line = os.read(primary, 4096).decode()
    os.close(primary)
    assert " orchestrator INFO job j1 completed  job=j1 run_s=1.5" in line and "{" not in line
    with (tmp_path / "log").open("w") as file:
        _log_to(file, monkeypatch)
    entry = json.loads((tmp_path / "log").read_text())
    assert entry["msg"] == "job j1 completed" and entry["job"] == "j1" and entry["run_s"] == 1.5
