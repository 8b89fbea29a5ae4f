"""`comfymesh status`, `jobs`, `cancel` and `logs`: the gateway's jobs from a terminal."""

from __future__ import annotations

import datetime
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from comfymesh.cli import cluster_view
from comfymesh.cli.follow import events
from comfymesh.cli.gateway import GatewayError, call, connect

UrlOption = Annotated[str | None, typer.Option("--url", help="gateway URL (default: http://COMFYMESH_HOST:COMFYMESH_PORT)")]
TokenOption = Annotated[str | None, typer.Option("--token", help="API token (default: COMFYMESH_API_TOKEN)")]
out = Console()


def _when(stamp: float | None) -> str:
    return datetime.datetime.fromtimestamp(stamp).strftime("%Y-%m-%d %H:%M:%S") if stamp else "-"


def _failure(job: dict[str, Any]) -> str:
    error = job.get("error") or {}
    if not error:
        return ""
    where = f"node {error.get('node_id')} ({error.get('node_type')})" if error.get("node_id") else "the job"
    return f"{where}: {error.get('message', '')}"


def status(job_id: Annotated[str | None, typer.Argument(help="a job id; without one, the running cluster")] = None,
           once: Annotated[bool, typer.Option("--once", help="print one frame of the cluster view and exit")] = False,
           interval: Annotated[float, typer.Option(min=0.1, help="seconds between redraws of the live view")] = 1.0,
           url: UrlOption = None, token: TokenOption = None) -> None:
    """A job's state, nodes and outputs; without a job id, the running cluster (GET /v1/cluster, as the
    /ui/cluster page shows it): queue depth, running jobs with progress, each orchestrator and stage replica
    with health, slots in use, loaded models and device memory, and recent failures. Live on a terminal until
    Ctrl+C; one frame with --once or when the output is not a terminal."""
    with connect(url, token) as http:
        if job_id is None:
            cluster_view.show(http, out, once, interval)
            return
        job = call(http, "GET", f"/v1/jobs/{job_id}").json()
    stamps = {"created": None, "started": None, "finished": None} | job
    times = {"queued": stamps["created"], "started": stamps["started"], "finished": stamps["finished"]}
    out.print(f"job {job['job_id']}: {job['status']} (" + ", ".join(f"{k} {_when(v)}" for k, v in times.items()) + ")")
    for node in job.get("nodes", []):
        out.print(f"  node {node['node_id']:>6} {node['class_type']:<28} {node['state']}")
    for image in job.get("images", []):
        out.print(f"  image {image['filename']} ({image['type']}) {image['url']}")
    if job.get("error"):
        out.print(f"[red]failed at {_failure(job)}[/]")


def jobs(status: Annotated[str | None, typer.Option(help="only jobs in this state: queued, running, completed, "
                                                            "failed, cancelled")] = None,
         limit: Annotated[int, typer.Option(min=1, max=500, help="how many, newest first")] = 20,
         url: UrlOption = None, token: TokenOption = None) -> None:
    """List jobs, newest first."""
    params: dict[str, Any] = {"limit": limit} | ({"status": status} if status else {})
    with connect(url, token) as http:
        page = call(http, "GET", "/v1/jobs", params=params).json()
    table = Table(*("job", "status", "created", "finished", "images", "error"), box=None)
    for job in page["items"]:
        table.add_row(job["job_id"], job["status"], _when(job.get("created")), _when(job.get("finished")),
                      str(len(job.get("images", []))), _failure(job))
    out.print(table)
    out.print(f"{len(page['items'])} of {page['total']} jobs")


def cancel(job_id: Annotated[str, typer.Argument(help="the job to cancel")],
           url: UrlOption = None, token: TokenOption = None) -> None:
    """Cancel a queued or running job (a running sampler stops within one step)."""
    with connect(url, token) as http:
        job = call(http, "POST", f"/v1/jobs/{job_id}/cancel").json()
    out.print(f"job {job_id}: {job['status']}")


def logs(job_id: Annotated[str, typer.Argument(help="the job whose events to print")],
         url: UrlOption = None, token: TokenOption = None) -> None:
    """Print a job's events from the first; a job still running is followed until it ends (Ctrl+C stops)."""
    with connect(url, token) as http:
        call(http, "GET", f"/v1/jobs/{job_id}")  # an unknown job is refused here, with its next step
        try:
            for kind, data in events(http, job_id):
                shown = {key: value for key, value in data.items() if key not in ("job_id", "image", "preview")}
                out.print(f"{_when(data.get('ts'))} {kind:<18} {_brief(shown)}", highlight=False)
        except KeyboardInterrupt:
            raise GatewayError([f"stopped following job {job_id} (the job itself goes on)"], 130) from None


def _brief(data: dict[str, Any]) -> str:
    return " ".join(f"{key}={value}" for key, value in data.items() if key != "ts")
