"""The one log line each job leaves when it ends on this orchestrator: its outcome and where its time went
(queue wait, then each stage's calls), readable as text on a terminal and as fields in JSON."""

from __future__ import annotations

import logging
from typing import Any

from comfymesh.logs import log_fields

log = logging.getLogger("comfymesh.orchestrator")


def finished_line(job_id: str, status: str, created: float, began: float, ended: float,
                  stage_seconds: dict[str, float], failure: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """The message and fields of a finished job's line. `created`, `began` (taken from the queue) and `ended`
    are seconds since the epoch; `stage_seconds` the time its stage calls took, by stage."""
    queued, ran = max(began - created, 0.0), max(ended - began, 0.0)
    stages = {stage: round(seconds, 3) for stage, seconds in sorted(stage_seconds.items())}
    spent = ", ".join(f"{stage} {seconds:.2f} s" for stage, seconds in stages.items())
    message = f"job {job_id} {status} in {ran:.2f} s (queued {queued:.2f} s{'; ' + spent if spent else ''})"
    fields: dict[str, Any] = {"job": job_id, "status": status, "queued_s": round(queued, 3), "run_s": round(ran, 3),
                              **{f"{stage}_s": seconds for stage, seconds in stages.items()}}
    if failure and failure.get("node_id"):
        message += f" at node {failure['node_id']} ({failure.get('node_type') or '?'})"
        fields["node"] = failure["node_id"]
    return message, fields


def log_finished(job_id: str, status: str, created: float, began: float, ended: float,
                 stage_seconds: dict[str, float], failure: dict[str, Any] | None = None) -> None:
    message, fields = finished_line(job_id, status, created, began, ended, stage_seconds, failure)
    log.info(message, extra=log_fields(**fields))
