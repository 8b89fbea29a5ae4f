"""Our jobs in ComfyUI's shapes: queue items, history entries and jobs-API items (§6)."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from comfymesh.contracts.events import JobStatus, NodeState
from comfymesh.gateway.engine import Job

# credentials for partner nodes never leave the server (§5.1)
_SECRET_KEYS = ("auth_token_comfy_org", "api_key_comfy_org")


class ComfyJobStatus(StrEnum):
    """A job's status in ComfyUI's jobs API (`/api/jobs`): its vocabulary, not ours."""

    PENDING = "pending"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"  # as newer upstream reports interrupts


# our status -> the jobs API's status
JOB_STATUS: dict[str, str] = {JobStatus.QUEUED: ComfyJobStatus.PENDING, JobStatus.RUNNING: ComfyJobStatus.IN_PROGRESS,
                              JobStatus.COMPLETED: ComfyJobStatus.COMPLETED, JobStatus.FAILED: ComfyJobStatus.FAILED,
                              JobStatus.CANCELLED: ComfyJobStatus.CANCELLED}
OUR_STATUS = {theirs: ours for ours, theirs in JOB_STATUS.items()}
_PREVIEWABLE = ("images", "video", "audio", "3d")


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


def _number(job: Job) -> int | float:
    return int(job.number) if float(job.number).is_integer() else float(job.number)


def extra_data(job: Job) -> dict[str, Any]:
    extra = dict(job.extra_data)
    for key in _SECRET_KEYS:
        extra.pop(key, None)
    extra.setdefault("create_time", _ms(job.created))
    if job.client_id:
        extra.setdefault("client_id", job.client_id)
    return extra


def queue_item(job: Job) -> list[Any]:
    """`[number, prompt_id, prompt, extra_data, outputs_to_execute]`."""
    return [_number(job), job.job_id, job.prompt, extra_data(job), list(job.output_node_ids)]


def status_messages(job: Job) -> list[list[Any]]:
    """The execution messages ComfyUI keeps in a history entry, rebuilt from the job record."""
    start = _ms(job.started or job.created)
    end = _ms(job.finished or job.started or job.created)
    messages: list[list[Any]] = [
        ["execution_start", {"prompt_id": job.job_id, "timestamp": start}],
        ["execution_cached", {"nodes": job.nodes_in(NodeState.CACHED), "prompt_id": job.job_id, "timestamp": start}]]
    executed = job.nodes_in(NodeState.DONE)
    if job.status == JobStatus.COMPLETED:
        messages.append(["execution_success", {"prompt_id": job.job_id, "timestamp": end}])
    elif job.status == JobStatus.FAILED:
        messages.append(["execution_error", execution_error(job, executed)])
    elif job.status == JobStatus.CANCELLED:
        running = next((n for n in job.nodes if n.state == NodeState.RUNNING), None)
        messages.append(["execution_interrupted", {
            "prompt_id": job.job_id, "node_id": running.node_id if running else "",
            "node_type": running.class_type if running else "", "executed": executed, "timestamp": end}])
    return messages


def execution_error(job: Job, executed: list[str]) -> dict[str, Any]:
    error = job.error
    return {"prompt_id": job.job_id, "node_id": error.node_id if error else "",
            "node_type": error.node_type if error else "", "executed": executed,
            "exception_message": error.message if error else "", "exception_type": error.type if error else "",
            "traceback": [], "current_inputs": {}, "current_outputs": [], "timestamp": _ms(job.finished or 0)}


def history_entry(job: Job) -> dict[str, Any]:
    return {
        "prompt": queue_item(job),
        "outputs": job.outputs,
        "status": {"status_str": "success" if job.status == JobStatus.COMPLETED else "error",
                   "completed": job.status == JobStatus.COMPLETED, "messages": status_messages(job)},
        "meta": {node_id: {"node_id": node_id, "display_node": node_id, "parent_node": None,
                           "real_node_id": node_id} for node_id in job.outputs},
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


def workflow_id(job: Job) -> str | None:
    """The frontend workflow a job came from (`extra_pnginfo.workflow.id`), if it says."""
    found = ((job.extra_data.get("extra_pnginfo") or {}).get("workflow") or {}).get("id")
    return found if isinstance(found, str) else None


def job_item(job: Job, detailed: bool = False) -> dict[str, Any]:
    outputs = job.outputs
    item: dict[str, Any] = {"id": job.job_id, "status": JOB_STATUS.get(job.status, job.status),
                            "priority": _number(job), "create_time": _ms(job.created),
                            "outputs_count": sum(len(v) for ui in outputs.values() if isinstance(ui, dict)
                                                 for v in ui.values() if isinstance(v, list))}
    if job.started:
        item["execution_start_time"] = _ms(job.started)
    if job.finished and job.is_finished:
        item["execution_end_time"] = _ms(job.finished)
    if job.status == JobStatus.FAILED:
        item["execution_error"] = execution_error(job, job.nodes_in(NodeState.DONE))
    preview = _preview_output(outputs)
    if preview is not None:
        item["preview_output"] = preview
    workflow = workflow_id(job)
    if workflow is not None:
        item["workflow_id"] = workflow
    if detailed and job.is_finished:
        item["outputs"] = outputs
        item["execution_status"] = history_entry(job)["status"]
        item["workflow"] = {"prompt": job.prompt, "extra_data": extra_data(job)}
    return item
