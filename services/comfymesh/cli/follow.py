"""A job's progress in the terminal, from its event stream: nodes done of the job's total with the running
node's name, and the sampler's steps while it samples."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from comfymesh.cli.gateway import GatewayError, call, describe, unreachable
from comfymesh.contracts.events import TERMINAL_EVENTS, EventType


def events(http: httpx.Client, job_id: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(event type, data) of the job's stream, from its first event; ends after the terminal one."""
    try:
        with http.stream("GET", f"/v1/jobs/{job_id}/events", timeout=httpx.Timeout(30, read=None)) as stream:
            if stream.status_code >= 400:
                stream.read()
                raise GatewayError(describe(stream))
            kind = ""
            for line in stream.iter_lines():
                if line.startswith("event:"):
                    kind = line[6:].strip()
                elif line.startswith("data:"):
                    data = json.loads(line[5:])
                    yield kind, data if isinstance(data, dict) else {}
                    if kind in TERMINAL_EVENTS:
                        return
    except httpx.TransportError as exc:
        raise unreachable(http) from exc


def follow(http: httpx.Client, job_id: str, nodes: dict[str, str], console: Console) -> str:
    """Show the job's progress until it ends; answers its final status (or "unknown" if the stream ended first).
    `nodes` maps each node id of the job to its class type (the bar's total and names)."""
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[count]}"),
               TimeElapsedColumn())
    done: set[str] = set()
    with Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task(f"job {job_id[:8]}: queued", total=max(len(nodes), 1), count=f"0/{len(nodes)} nodes")
        steps: TaskID | None = None
        for kind, data in events(http, job_id):
            node_id = str(data.get("node_id", ""))
            if kind in (EventType.NODE_DONE, EventType.CACHED):
                done.update([node_id] if kind == EventType.NODE_DONE else [str(n) for n in data.get("nodes", [])])
                progress.update(bar, completed=len(done & set(nodes)) or len(done),
                                count=f"{len(done & set(nodes)) or len(done)}/{len(nodes)} nodes")
            elif kind == EventType.NODE_RUNNING:
                name = data.get("class_type") or nodes.get(node_id, "")
                progress.update(bar, description=f"{name} (node {node_id})")
            elif kind == EventType.NODE_PROGRESS and data.get("max"):
                if steps is None:
                    steps = progress.add_task("steps", total=data["max"], count="")
                progress.update(steps, total=data["max"], completed=data.get("value", 0),
                                description=f"  steps of node {node_id}", count=f"{data.get('value', 0)}/{data['max']}")
            elif kind == EventType.RETRYING:
                progress.console.print(f"[yellow]retrying node {node_id}: {data.get('reason', '')}[/]")
            elif kind in TERMINAL_EVENTS:
                progress.update(bar, description=f"job {job_id[:8]}: {kind}")
                return kind
    return "unknown"


def submit(http: httpx.Client, prompt: dict[str, Any]) -> dict[str, Any]:
    """POST the prompt to /v1/workflows; answers the accepted job (its `job_id`)."""
    try:
        return dict(call(http, "POST", "/v1/workflows", json={"prompt": prompt}).json())
    except GatewayError as exc:
        exc.lines[0] = exc.lines[0].replace("refused", "the workflow was refused", 1)
        raise


def watch_and_save(http: httpx.Client, job_id: str, out: Path, cancel_on_exit: bool, console: Console) -> None:
    """Follow a submitted job with a progress bar, then save its images in `out`; Ctrl+C asks whether to cancel
    it (cancels it with `cancel_on_exit`). A job that does not complete raises GatewayError."""
    try:  # from the moment the job is known: a Ctrl+C while its nodes are read is still about this job
        nodes = {n["node_id"]: n["class_type"] for n in call(http, "GET", f"/v1/jobs/{job_id}").json()["nodes"]}
        status = follow(http, job_id, nodes, console)
    except KeyboardInterrupt:
        _interrupted(http, job_id, cancel_on_exit, console)
    job = call(http, "GET", f"/v1/jobs/{job_id}").json()
    if status != EventType.COMPLETED:
        error = job.get("error") or {}
        where = f"node {error.get('node_id')} ({error.get('node_type')})" if error.get("node_id") else "the job"
        raise GatewayError([f"job {job_id} {job['status']} at {where}: {error.get('message', '')}",
                            f"`comfymesh logs {job_id}` shows its events"])
    out.mkdir(parents=True, exist_ok=True)
    for index, picture in enumerate(job["images"]):
        target = out / Path(picture["filename"]).name
        target.write_bytes(call(http, "GET", f"/v1/jobs/{job_id}/output", params={"index": index}).content)
        console.print(f"saved {target}")
    if not job["images"]:
        console.print(f"job {job_id} completed with no images")


def _interrupted(http: httpx.Client, job_id: str, cancel_on_exit: bool, console: Console) -> NoReturn:
    """Ctrl+C while following: cancel the job when told to, or when the user says so; otherwise leave it."""
    console.print()
    ask = not cancel_on_exit and sys.stdin.isatty()
    try:
        stop = cancel_on_exit or (ask and typer.confirm(f"cancel job {job_id}?", default=True))
    except (KeyboardInterrupt, typer.Abort):
        stop = True  # a second Ctrl+C at the question: yes
    if stop:
        job = call(http, "POST", f"/v1/jobs/{job_id}/cancel").json()
        console.print(f"job {job_id}: {job['status']}")
    else:
        console.print(f"job {job_id} goes on running: `comfymesh status {job_id}` follows it, "
                      f"`comfymesh cancel {job_id}` stops it")
    raise typer.Exit(130)
