"""`comfymesh up` starts the whole mesh locally; `comfymesh run graph.json` runs one workflow."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from comfymesh.cli.supervisor import ServiceSpec, Supervisor, ignore_stop_signals, interrupt_on_stop_signals
from comfymesh.config import get_settings
from comfymesh.config.process_env import child_environment
from comfymesh.contracts.events import TERMINAL_EVENTS, EventType

app = typer.Typer(help="comfymesh: run ComfyUI workflows on a gRPC service mesh.", no_args_is_help=True,
                  add_completion=False)


class _Terminal(Console):
    """Rich's console, except that a closed pipe silences it instead of exiting the process (rich raises
    SystemExit, which in `up` would skip the services' shutdown, or end a relay thread)."""

    def on_broken_pipe(self) -> None:
        _silence(self)


def _silence(terminal: Console) -> None:
    """Send everything this process writes to /dev/null: its terminal or pipe is gone."""
    terminal.quiet = True
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a stream closed or replaced
            os.dup2(devnull, stream.fileno())
    os.close(devnull)


console = _Terminal(stderr=True)
DATA_FOLDERS = ("models/checkpoints", "models/loras", "models/vae", "input", "output", "temp", "artifacts")


def _diffusion_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None and importlib.util.find_spec("diffusers") is not None


@app.command()
def up(
    without_diffusion: Annotated[bool, typer.Option(help="do not start the diffusion stage")] = False,
) -> None:
    """Start every service as a local process, wait for health, print the URL; Ctrl+C stops all."""
    settings = get_settings()
    for folder in DATA_FOLDERS:
        settings.folder(folder)
    env = child_environment({"COMFYMESH_HOME": str(settings.home), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    if not settings.internal_secret.get_secret_value():
        # one random secret per `up`, shared by the children only: no other local process can call them
        env["COMFYMESH_INTERNAL_SECRET"] = secrets.token_urlsafe(32)
    specs = [ServiceSpec("imaging", ["comfymesh.imaging", "--listen", settings.replicas("imaging")[0]])]
    if not without_diffusion and _diffusion_available():
        specs.append(ServiceSpec("diffusion", ["comfymesh.diffusion", "--listen", settings.replicas("diffusion")[0]]))
    elif not without_diffusion:
        _say("[yellow]torch/diffusers are not installed: starting without the diffusion stage[/]")
    specs += [ServiceSpec("orchestrator", ["comfymesh.orchestrator", "--listen", settings.orchestrator]),
              ServiceSpec("gateway", ["comfymesh.gateway", "--host", settings.host, "--port", str(settings.port)])]

    def echo(name: str, line: str) -> None:
        _say(f"[dim]{name:>12}[/] {line}", markup=True, highlight=False, soft_wrap=True)

    supervisor = Supervisor(specs, env, echo)
    interrupt_on_stop_signals()
    failed = False
    try:
        supervisor.start_all()
        url = f"http://{settings.host}:{settings.port}"
        _wait_ready(url)
        _say(f"\n[bold green]comfymesh is up:[/] {url}  (API docs {url}/v1/docs, data in {settings.home})\n"
             "Press Ctrl+C to stop.")
        supervisor.watch()
    except KeyboardInterrupt:
        _say("\nstopping comfymesh ...")
    except RuntimeError as exc:
        _say(f"[red]{exc}[/]")
        failed = True
    finally:  # whatever ended the wait, the services stop with `up`
        ignore_stop_signals()
        supervisor.stop()
    if failed:
        raise typer.Exit(1)


def _say(text: str, **options: Any) -> None:
    """Print to the terminal. Once it is gone (a closed pipe, a hung-up terminal), output goes to /dev/null
    instead: a failed write must never skip the services' shutdown."""
    try:
        console.print(text, **options)
    except (OSError, ValueError):  # EIO from a hung-up terminal, a closed file (rich handles EPIPE itself)
        _silence(console)


def _wait_ready(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the gateway at {url} did not become ready within {timeout:.0f} s")


@app.command()
def run(
    workflow: Annotated[Path, typer.Argument(help="API-format workflow JSON (ComfyUI 'Export (API)')",
                                             exists=True, dir_okay=False)],
    url: Annotated[str, typer.Option(help="gateway URL")] = "http://127.0.0.1:8080",
    out: Annotated[Path, typer.Option(help="folder to save output images in")] = Path("outputs"),
) -> None:
    """Submit a workflow, show its progress, then save its images."""
    try:
        prompt: Any = json.loads(workflow.read_text())
    except json.JSONDecodeError as exc:
        console.print(f"[red]{workflow} is not JSON: {exc}[/]")
        raise typer.Exit(2) from exc
    token = get_settings().api_token.get_secret_value()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(base_url=url, timeout=30, headers=headers) as http:
        try:
            reply = http.post("/v1/workflows", json=prompt)
        except httpx.ConnectError as exc:
            console.print(f"[red]cannot reach comfymesh at {url}; start it with `comfymesh up` (or `make run`)[/]")
            raise typer.Exit(1) from exc
        if reply.status_code != 202:
            console.print(f"[red]rejected ({reply.status_code}):[/] {json.dumps(reply.json(), indent=2)}")
            raise typer.Exit(1)
        job_id = reply.json()["job_id"]
        status = _follow(http, job_id)
        job = http.get(f"/v1/jobs/{job_id}").json()
        if status != EventType.COMPLETED:
            console.print(f"[red]job {job_id} {status}:[/] {json.dumps(job.get('error'), indent=2)}")
            raise typer.Exit(1)
        out.mkdir(parents=True, exist_ok=True)
        for index, image in enumerate(job["images"]):
            target = out / image["filename"]
            target.write_bytes(http.get(f"/v1/jobs/{job_id}/output", params={"index": index}).content)
            console.print(f"saved {target}")


def _follow(http: httpx.Client, job_id: str) -> str:
    """Follow the job's SSE stream with a progress bar; returns its final status."""
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TimeElapsedColumn())
    with Progress(*columns, console=console) as progress, \
            http.stream("GET", f"/v1/jobs/{job_id}/events", timeout=None) as stream:
        nodes = progress.add_task(f"job {job_id[:8]}", total=None)
        steps = progress.add_task("steps", total=None, visible=False)
        event_type = ""
        done = 0
        for line in stream.iter_lines():
            if line.startswith("event:"):
                event_type = line[6:].strip()
            elif line.startswith("data:"):
                data = json.loads(line[5:])
                if event_type == EventType.NODE_DONE:
                    done += 1
                    progress.update(nodes, completed=done)
                elif event_type == EventType.CACHED:
                    done += len(data.get("nodes", []))
                    progress.update(nodes, completed=done)
                elif event_type == EventType.NODE_RUNNING:
                    progress.update(nodes, description=f"{data.get('class_type', '')} ({data['node_id']})")
                elif event_type == EventType.NODE_PROGRESS:
                    progress.update(steps, visible=True, completed=data["value"], total=data["max"])
                elif event_type in TERMINAL_EVENTS:
                    return event_type
    return "unknown"


def main() -> None:
    app()


if __name__ == "__main__":
    main()
