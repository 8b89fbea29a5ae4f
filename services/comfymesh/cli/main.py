"""`comfymesh`: `up` starts the whole mesh locally, `run` runs a workflow (`watch`: once per new image in a
folder), `status`/`jobs`/`cancel`/`logs` watch
jobs, `models` lists and pulls model files, `workflows` saves and runs typed workflows, `demo` writes tiny models
for the shipped templates."""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import click
import httpx
import typer
from rich.console import Console

from comfymesh.cli import demo, follow, gateway, jobs, models, prompt_edit, watch, workflows
from comfymesh.cli.diffusion_devices import device_set, plan_replicas, visible_cuda_devices
from comfymesh.cli.supervisor import ServiceSpec, Supervisor, ignore_stop_signals, interrupt_on_stop_signals
from comfymesh.config import get_settings
from comfymesh.config.process_env import child_environment

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
    if settings.log_json is None and console.is_terminal:
        # the services write to `up`'s pipe, not to the terminal: tell them a person reads what `up` relays
        env["COMFYMESH_LOG_JSON"] = "false"
    if not settings.internal_secret.get_secret_value():
        # one random secret per `up`, shared by the children only: no other local process can call them
        env["COMFYMESH_INTERNAL_SECRET"] = secrets.token_urlsafe(32)
    specs = [ServiceSpec("imaging", ["comfymesh.imaging", "--listen", settings.replicas("imaging")[0]])]
    if not without_diffusion and _diffusion_available():
        configured = settings.diffusion_devices or settings.device
        devices = device_set(configured, 0 if configured else visible_cuda_devices(), env)
        try:
            replicas = plan_replicas(devices, settings.replicas("diffusion"), env, settings.diffusion_split_devices)
        except ValueError as exc:
            _say(f"[red]{exc}[/]")
            raise typer.Exit(2) from None
        for replica in replicas:
            _say(replica.describe(), markup=False, highlight=False)
            specs.append(ServiceSpec(replica.name, ["comfymesh.diffusion", "--listen", replica.listen], replica.env))
        # the orchestrator (and gateway) call every replica as the diffusion stage's
        env["COMFYMESH_DIFFUSION_REPLICAS"] = ",".join(r.listen for r in replicas)
    elif not without_diffusion:
        _say("[yellow]torch/diffusers are not installed: starting without the diffusion stage[/]")
    if len(specs) == 1:  # a stage not started is not configured: /readyz would wait for it, jobs for its nodes
        env["COMFYMESH_DIFFUSION_REPLICAS"] = ""
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
        _say(f"\n[bold green]comfymesh is up:[/] {url}  (API docs {url}/v1/docs, cluster view {url}/ui/cluster or "
             f"`comfymesh status`, data in {settings.home})\nPress Ctrl+C to stop.")
        if not any((settings.home / "models").rglob("*.safetensors")):
            _say("No model files yet: `comfymesh demo` writes tiny test models (noise images) so every template "
                 "runs; `comfymesh models pull URL` downloads real ones (see README).")
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
    workflow: Annotated[str, typer.Argument(help="a workflow file, UI or API format (ComfyUI's Save or Export "
                                                 "(API)), or the name of a template the gateway serves "
                                                 "(ui/templates/, e.g. comfymesh-imaging)")],
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="override an input: node.input=value (node by id, title or class) or input=value when "
                      "one node has it; values are JSON where they parse (5, 0.5, true), text otherwise")] = None,
    image: Annotated[list[str] | None, typer.Option(
        help="upload an image and load it: NODE=PATH or PATH (without a node: the workflow's only image loader)")] = None,
    out: Annotated[Path, typer.Option(help="folder to save output images in")] = Path("outputs"),
    cancel_on_exit: Annotated[bool, typer.Option(help="on Ctrl+C, cancel the job without asking")] = False,
    url: jobs.UrlOption = None,
    token: jobs.TokenOption = None,
) -> None:
    """Submit a workflow, show its progress, then save its images. Ctrl+C asks whether to cancel the job."""
    with gateway.connect(url, token) as http:
        prompt = prompt_edit.to_prompt(http, prompt_edit.load_workflow(http, workflow))
        for assignment in set_ or []:
            prompt_edit.apply_set(prompt, assignment)
        for argument in image or []:
            prompt_edit.attach_image(http, prompt, argument)
        job_id = follow.submit(http, prompt)["job_id"]
        follow.watch_and_save(http, job_id, out, cancel_on_exit, console)


app.add_typer(models.app, name="models")
app.add_typer(workflows.app, name="workflows")
app.command()(demo.demo)
app.command()(watch.watch)
app.command()(jobs.status)
app.command(name="jobs")(jobs.jobs)
app.command()(jobs.cancel)
app.command()(jobs.logs)


def main() -> None:
    try:
        code = app(standalone_mode=False)  # a typer.Exit comes back as its code here
    except gateway.GatewayError as exc:
        for line in exc.lines:
            console.print(line, style="red" if line is exc.lines[0] else None, markup=False, highlight=False)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
