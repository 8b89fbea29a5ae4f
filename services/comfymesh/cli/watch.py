"""`comfymesh watch`: run one workflow again for every image that appears in a folder (the continuous mode of an
API executor script). Each image is uploaded, put into the workflow's image loader, run, and its outputs saved;
a ledger in the output folder remembers what was done, so a restart goes on where it stopped."""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import httpx
import typer
from PIL import Image, UnidentifiedImageError
from rich.console import Console

from comfymesh.cli import follow, gateway, jobs, prompt_edit
from comfymesh.cli.gateway import GatewayError
from comfymesh.contracts.events import JobStatus

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
LEDGER_NAME = ".comfymesh-watch.jsonl"


@dataclass(frozen=True)
class Seen:
    """A file as one scan found it: a file whose size and time have not changed since the last scan is complete
    (nothing still writes it)."""

    name: str
    size: int
    mtime_ns: int


def scan(folder: Path) -> dict[str, Seen]:
    """The image files directly in `folder`, by name (hidden files and partial downloads skipped)."""
    found = {}
    for path in folder.iterdir():
        if path.name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue
        stat = path.stat()
        found[path.name] = Seen(path.name, stat.st_size, stat.st_mtime_ns)
    return found


def read_ledger(out: Path) -> set[Seen]:
    """Files already run (with the size and time they had then: a file replaced by a new one runs again)."""
    ledger = out / LEDGER_NAME
    if not ledger.is_file():
        return set()
    done = set()
    for line in ledger.read_text().splitlines():
        try:
            entry = json.loads(line)
            done.add(Seen(entry["file"], int(entry["size"]), int(entry["mtime_ns"])))
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by a crash: that file runs again
    return done


def _record(out: Path, seen: Seen, job_id: str, status: str) -> None:
    entry = {"file": seen.name, "size": seen.size, "mtime_ns": seen.mtime_ns, "job_id": job_id, "status": status}
    with (out / LEDGER_NAME).open("a") as ledger:
        ledger.write(json.dumps(entry) + "\n")


def _is_whole_image(path: Path) -> bool:
    try:
        with Image.open(path) as picture:
            picture.verify()
        return True
    except (OSError, UnidentifiedImageError, SyntaxError):  # truncated or not an image (yet)
        return False


def run_one(http: httpx.Client, prompt: prompt_edit.Prompt, loader: str | None, path: Path, out: Path,
            console: Console) -> tuple[str, str]:
    """Run the workflow on one image; answers (job id, final status). A failed job is reported, not raised."""
    job_prompt = copy.deepcopy(prompt)
    prompt_edit.attach_image(http, job_prompt, f"{loader}={path}" if loader else str(path))
    job_id = follow.submit(http, job_prompt)["job_id"]
    console.print(f"{path.name}: job {job_id}")
    try:
        follow.watch_and_save(http, job_id, out, cancel_on_exit=False, console=console)
    except GatewayError as exc:
        console.print(f"[red]{path.name}: {exc.lines[0]}[/]")
        return job_id, JobStatus.FAILED
    return job_id, JobStatus.COMPLETED


def watch(
    workflow: Annotated[str, typer.Argument(help="a workflow file (UI or API format), a saved workflow or a "
                                                 "template name, with one image loader (or name it: --node)")],
    folder: Annotated[Path, typer.Argument(help="the folder to watch for input images")],
    node: Annotated[str | None, typer.Option(help="the image loader to feed (node id, title or class), when the "
                                                  "workflow has several")] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="override an input for every run: node.input=value or input=value")] = None,
    out: Annotated[Path, typer.Option(help="folder to save output images in (and the ledger of runs)")]
        = Path("outputs"),
    interval: Annotated[float, typer.Option(min=0.05, help="seconds between scans of the folder")] = 1.0,
    once: Annotated[bool, typer.Option(help="run the images there now, then exit (non-zero if one failed)")]
        = False,
    url: jobs.UrlOption = None,
    token: jobs.TokenOption = None,
) -> None:
    """Re-run a workflow for every new image in FOLDER, one job per image, saving the outputs in --out.
    Images already run (see OUT/.comfymesh-watch.jsonl) are skipped; Ctrl+C stops watching."""
    if not folder.is_dir():
        raise GatewayError([f"{folder} is not a folder", "give the folder new input images arrive in"], 2)
    console = Console(stderr=True)
    out.mkdir(parents=True, exist_ok=True)
    with gateway.connect(url, token) as http:
        prompt = prompt_edit.to_prompt(http, prompt_edit.load_workflow(http, workflow))
        for assignment in set_ or []:
            prompt_edit.apply_set(prompt, assignment)
        done = read_ledger(out)
        previous: dict[str, Seen] = {}
        failures = 0
        if not once:
            console.print(f"watching {folder} for images (Ctrl+C stops); outputs go to {out}")
        while True:
            current = scan(folder)
            # ready: unchanged since the last scan (with --once, whatever is there now), not yet run
            ready = sorted((seen for name, seen in current.items()
                            if (once or previous.get(name) == seen) and seen not in done),
                           key=lambda seen: (seen.mtime_ns, seen.name))
            for seen in ready:
                path = folder / seen.name
                if not _is_whole_image(path):
                    if once:
                        console.print(f"[yellow]{seen.name}: not a readable image, skipped[/]")
                        failures += 1
                    continue
                job_id, status = run_one(http, prompt, node, path, out, console)
                failures += status != JobStatus.COMPLETED
                _record(out, seen, job_id, status)
                done.add(seen)
            if once:
                break
            previous = current
            try:
                time.sleep(interval)  # the folder is polled: works on every filesystem, network mounts too
            except KeyboardInterrupt:
                console.print(f"stopped watching {folder}")
                raise typer.Exit(130) from None
    if failures:
        raise typer.Exit(1)
