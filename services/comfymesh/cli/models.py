"""`comfymesh models list|pull`: the server's model files, and downloads into its model folders."""

from __future__ import annotations

import time
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from comfymesh.cli.gateway import GatewayError, call, connect
from comfymesh.cli.jobs import TokenOption, UrlOption
from comfymesh.model_pull import PullState

app = typer.Typer(help="Model files: list what the server has, pull new ones by URL.", no_args_is_help=True)
out = Console()
err = Console(stderr=True)


@app.command(name="list")
def list_models(folder: Annotated[str | None, typer.Argument(help="one folder (checkpoints, loras, vae, ...); "
                                                                  "default: every folder with files")] = None,
                url: UrlOption = None, token: TokenOption = None) -> None:
    """List the model files the server loads, by folder."""
    with connect(url, token) as http:
        folders = [folder] if folder else call(http, "GET", "/models").json()
        shown = 0
        for name in folders:
            files = call(http, "GET", f"/models/{name}").json()
            if isinstance(files, dict) or (not files and not folder):
                continue
            out.print(f"{name}/", style="bold", highlight=False)
            for file in files:
                out.print(f"  {file}", highlight=False)
            shown += len(files)
    if not shown:
        out.print("no model files yet: `comfymesh models pull URL --folder checkpoints` downloads one, "
                  "`comfymesh demo` writes tiny test models")


@app.command()
def pull(source: Annotated[str, typer.Argument(help="http(s) URL of a .safetensors file (an allowed host: "
                                                    "COMFYMESH_MODEL_PULL_HOSTS on the server)")],
         folder: Annotated[str, typer.Option(help="model folder: checkpoints, loras, vae, diffusion_models, "
                                                  "text_encoders, ...")] = "checkpoints",
         sha256: Annotated[str | None, typer.Option(help="the file's SHA-256, checked before the file is kept")] = None,
         name: Annotated[str | None, typer.Option(help="file name (default: the URL's last part)")] = None,
         url: UrlOption = None, token: TokenOption = None) -> None:
    """Have the server download a model file into its model folder, with a progress bar; a pull that stopped
    resumes where it was."""
    body = {"url": source, "folder": folder, "sha256": sha256, "name": name}
    with connect(url, token) as http:
        view = call(http, "POST", "/v1/models/pull", json={k: v for k, v in body.items() if v is not None}).json()
        columns = (TextColumn(f"{view['folder']}/{view['name']}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
        with Progress(*columns, console=err) as progress:
            task = progress.add_task("pull", total=view["total"])
            while view["state"] == PullState.RUNNING:
                progress.update(task, completed=view["received"], total=view["total"])
                time.sleep(0.5)  # the server reports progress; half a second is smooth enough for a terminal
                view = call(http, "GET", f"/v1/models/pulls/{view['id']}").json()
            progress.update(task, completed=view["received"], total=view["total"] or view["received"])
    if view["state"] != PullState.DONE:
        raise GatewayError([f"the pull of {source} failed: {view['error']}",
                            "check the URL and --sha256; pulling again resumes a cut download"])
    err.print(f"saved {view['folder']}/{view['name']} ({view['received']} bytes) on the server")
