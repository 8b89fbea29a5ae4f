"""`comfymesh workflows list|add|run`: saved workflows (PUT/GET /v1/workflows/{name}, POST …/run) from a terminal."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from comfymesh.cli.follow import watch_and_save
from comfymesh.cli.gateway import GatewayError, call, connect
from comfymesh.cli.jobs import TokenOption, UrlOption
from comfymesh.cli.prompt_edit import parse_value

app = typer.Typer(help="Saved workflows: typed endpoints with named inputs.", no_args_is_help=True)
out = Console()
err = Console(stderr=True)


def _inputs(view: dict[str, Any]) -> str:
    return ", ".join(f"{i['name']} ({i['kind']}, default {i['default']!r})" for i in view.get("inputs", [])) or "-"


@app.command(name="list")
def list_workflows(url: UrlOption = None, token: TokenOption = None) -> None:
    """List the saved workflows with their inputs."""
    with connect(url, token) as http:
        page = call(http, "GET", "/v1/workflows").json()
    for view in page["items"]:
        out.print(f"[bold]{view['name']}[/]  {view.get('description', '')}", highlight=False)
        out.print(f"  inputs: {_inputs(view)}", highlight=False)
    if not page["items"]:
        out.print("no saved workflows: `comfymesh workflows add NAME FILE --input NODE.INPUT` saves one")


@app.command()
def add(name: Annotated[str, typer.Argument(help="the workflow's name (its endpoint: /v1/workflows/NAME/run)")],
        file: Annotated[Path, typer.Argument(help="workflow file, UI or API format", exists=True, dir_okay=False)],
        input_: Annotated[list[str] | None, typer.Option(
            "--input", help="a public input: NODE.INPUT or NODE.INPUT=NAME (node id as in the file)")] = None,
        description: Annotated[str, typer.Option(help="what the workflow does")] = "",
        url: UrlOption = None, token: TokenOption = None) -> None:
    """Save (or replace) a workflow under NAME with the inputs a run may set."""
    try:
        workflow = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GatewayError([f"{file} is not JSON: {exc}"], 2) from exc
    declared = []
    for item in input_ or []:
        target, _, public = item.partition("=")
        node_id, dot, input_name = target.rpartition(".")
        if not dot or not node_id or not input_name:
            raise GatewayError([f"--input {item!r}: write it as NODE.INPUT or NODE.INPUT=NAME"], 2)
        declared.append({"node_id": node_id, "input": input_name} | ({"name": public} if public else {}))
    body = {"workflow": workflow, "inputs": declared, "description": description}
    with connect(url, token) as http:
        view = call(http, "PUT", f"/v1/workflows/{name}", json=body).json()
    err.print(f"saved {view['name']}: inputs {_inputs(view)}; run it with `comfymesh workflows run {name}` "
              f"or POST {view['run_url']}", highlight=False)


@app.command()
def run(name: Annotated[str, typer.Argument(help="a saved workflow's name")],
        set_: Annotated[list[str] | None, typer.Option("--set", help="an input value: NAME=VALUE (JSON where it "
                                                                     "parses, text otherwise)")] = None,
        image: Annotated[list[str] | None, typer.Option(help="upload an image for an image input: NAME=PATH")] = None,
        out_dir: Annotated[Path, typer.Option("--out", help="folder to save output images in")] = Path("outputs"),
        cancel_on_exit: Annotated[bool, typer.Option(help="on Ctrl+C, cancel the job without asking")] = False,
        url: UrlOption = None, token: TokenOption = None) -> None:
    """Run a saved workflow with input values, show its progress, then save its images."""
    values: dict[str, Any] = {}
    for item in set_ or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise GatewayError([f"--set {item!r}: write it as NAME=VALUE"], 2)
        values[key] = parse_value(raw)
    with connect(url, token) as http:
        for item in image or []:
            key, sep, path_text = item.partition("=")
            path = Path(path_text)
            if not sep or not path.is_file():
                raise GatewayError([f"--image {item!r}: write it as NAME=PATH, PATH an image file"], 2)
            with path.open("rb") as handle:
                stored = call(http, "POST", "/upload/image", files={"image": (path.name, handle)},
                              data={"type": "input", "overwrite": "true"}).json()
            values[key] = f"{stored['subfolder']}/{stored['name']}" if stored.get("subfolder") else stored["name"]
        job_id = call(http, "POST", f"/v1/workflows/{name}/run", json={"inputs": values}).json()["job_id"]
        watch_and_save(http, job_id, out_dir, cancel_on_exit, err)
