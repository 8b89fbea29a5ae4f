"""Our job records in ComfyUI's shapes: queue items, history entries and jobs-API items (§6)."""

from __future__ import annotations

import json
from typing import Any

from comfymesh.v1 import orchestrator_pb2

# credentials for partner nodes never leave the server (§5.1)
_SECRET_KEYS = ("auth_token_comfy_org", "api_key_comfy_org")
# our status -> the jobs API's status (`cancelled` as newer upstream reports interrupts)
JOB_STATUS = {"queued": "pending", "running": "in_progress", "completed": "completed", "failed": "failed",
              "cancelled": "cancelled"}
OUR_STATUS = {theirs: ours for ours, theirs in JOB_STATUS.items()}
_PREVIEWABLE = ("images", "video", "audio", "3d")


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


def _number(job: orchestrator_pb2.Job) -> int | float:
    return int(job.number) if float(job.number).is_integer() else float(job.number)


def extra_data(job: orchestrator_pb2.Job) -> dict[str, Any]:
    extra = json.loads(job.extra_data_json or "{}")
    for key in _SECRET_KEYS:
        extra.pop(key, None)
    extra.setdefault("create_time", _ms(job.created))
    if job.client_id:
        extra.setdefault("client_id", job.client_id)
    return dict(extra)


def queue_item(job: orchestrator_pb2.Job) -> list[Any]:
    """`[number, prompt_id, prompt, extra_data, outputs_to_execute]`."""
    return [_number(job), job.job_id, json.loads(job.prompt_json or "{}"), extra_data(job),
            list(job.output_node_ids)]


def status_messages(job: orchestrator_pb2.Job) -> list[list[Any]]:
    """The execution messages ComfyUI keeps in a history entry, rebuilt from the job record."""
    start = _ms(job.started or job.created)
    end = _ms(job.finished or job.started or job.created)
    cached = [n.node_id for n in job.nodes if n.state == "cached"]
    messages: list[list[Any]] = [
        ["execution_start", {"prompt_id": job.job_id, "timestamp": start}],
        ["execution_cached", {"nodes": cached, "prompt_id": job.job_id, "timestamp": start}]]
    executed = [n.node_id for n in job.nodes if n.state == "done"]
    if job.status == "completed":
        messages.append(["execution_success", {"prompt_id": job.job_id, "timestamp": end}])
    elif job.status == "failed":
        messages.append(["execution_error", execution_error(job, executed)])
    elif job.status == "cancelled":
        running = next((n for n in job.nodes if n.state == "running"), None)
        messages.append(["execution_interrupted", {
            "prompt_id": job.job_id, "node_id": running.node_id if running else "",
            "node_type": running.class_type if running else "", "executed": executed, "timestamp": end}])
    return messages


def execution_error(job: orchestrator_pb2.Job, executed: list[str]) -> dict[str, Any]:
    return {"prompt_id": job.job_id, "node_id": job.error.node_id, "node_type": job.error.node_type,
            "executed": executed, "exception_message": job.error.message, "exception_type": job.error.type,
            "traceback": [], "current_inputs": {}, "current_outputs": [], "timestamp": _ms(job.finished)}


def history_entry(job: orchestrator_pb2.Job) -> dict[str, Any]:
    outputs = json.loads(job.outputs_json or "{}")
    return {
        "prompt": queue_item(job),
        "outputs": outputs,
        "status": {"status_str": "success" if job.status == "completed" else "error",
                   "completed": job.status == "completed", "messages": status_messages(job)},
        "meta": {node_id: {"node_id": node_id, "display_node": node_id, "parent_node": None,
                           "real_node_id": node_id} for node_id in outputs},
    }


def _preview_output(outputs: dict[str, Any]) -> dict[str, Any] | None:
    """The first previewable output item, preferring files in the output folder (§6.4)."""
    candidates = [(node_id, key, item) for node_id, ui in outputs.items() if isinstance(ui, dict)
                  for key in _PREVIEWABLE for item in ui.get(key) or [] if isinstance(item, dict)]
    candidates.sort(key=lambda c: c[2].get("type") != "output")
    if not candidates:
        return None
    node_id, key, item = candidates[0]
    return {**item, "nodeId": node_id, "mediaType": key}


def job_item(job: orchestrator_pb2.Job, detailed: bool = False) -> dict[str, Any]:
    outputs = json.loads(job.outputs_json or "{}")
    extra = json.loads(job.extra_data_json or "{}")
    item: dict[str, Any] = {"id": job.job_id, "status": JOB_STATUS.get(job.status, job.status),
                            "priority": _number(job), "create_time": _ms(job.created),
                            "outputs_count": sum(len(v) for ui in outputs.values() if isinstance(ui, dict)
                                                 for v in ui.values() if isinstance(v, list))}
    if job.started:
        item["execution_start_time"] = _ms(job.started)
    if job.finished and job.status in ("completed", "failed", "cancelled"):
        item["execution_end_time"] = _ms(job.finished)
    if job.status == "failed":
        item["execution_error"] = execution_error(job, [n.node_id for n in job.nodes if n.state == "done"])
    preview = _preview_output(outputs)
    if preview is not None:
        item["preview_output"] = preview
    workflow_id = ((extra.get("extra_pnginfo") or {}).get("workflow") or {}).get("id")
    if isinstance(workflow_id, str):
        item["workflow_id"] = workflow_id
    if detailed and job.status in ("completed", "failed", "cancelled"):
        entry = history_entry(job)
        item["outputs"] = outputs
        item["execution_status"] = entry["status"]
        item["workflow"] = {"prompt": json.loads(job.prompt_json or "{}"), "extra_data": extra_data(job)}
    return item
