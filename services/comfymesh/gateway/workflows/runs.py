"""Running a saved workflow: its inputs set from a run request, the job submitted, waited for up to a limit,
and its images converted and written where the request asked. No HTTP here: routes turn the answers into
responses."""

from __future__ import annotations

import asyncio
import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from comfymesh.catalog.files import resolve_inside
from comfymesh.config import Settings
from comfymesh.contracts.events import JobStatus, is_terminal
from comfymesh.files import BadKey, FilesStore, LocalFiles, safe_key
from comfymesh.gateway.engine import Job, NewJob, Submission
from comfymesh.gateway.jobs_service import JobService
from comfymesh.gateway.workflows import outputs
from comfymesh.gateway.workflows.declaration import ImageInput, PublicInput
from comfymesh.gateway.workflows.image_inputs import ImageSources, resolve_image
from comfymesh.gateway.workflows.outputs import OutputFormat
from comfymesh.logs import log_fields

log = logging.getLogger("comfymesh.gateway")
OUTPUT_FOLDERS = ("output", "temp")


@dataclass(frozen=True)
class Rendered:
    """One output image in the requested format."""

    index: int
    filename: str
    media_type: str
    data: bytes
    destination: str | None = None


def image_path(home: Path, image: dict[str, Any]) -> Path | None:
    """The file of an output image record, if it is inside its folder and still there."""
    folder = str(image.get("type", "output"))
    if folder not in OUTPUT_FOLDERS:
        return None
    name = "/".join(p for p in (str(image.get("subfolder", "")), str(image.get("filename", ""))) if p)
    path = resolve_inside(home / folder, name)
    return path if path is not None and path.is_file() else None


def rendered_name(image: dict[str, Any], output_format: OutputFormat) -> str:
    return Path(str(image.get("filename", "image.png"))).stem + outputs.SUFFIXES[output_format]


def _stored_image(files: FilesStore, image: dict[str, Any]) -> bytes | None:
    """An output image record's bytes in a shared files store, if it is still there."""
    folder = str(image.get("type", "output"))
    try:
        return files.read(safe_key(folder, str(image.get("subfolder", "")), str(image.get("filename", "")))) \
            if folder in OUTPUT_FOLDERS else None
    except (BadKey, FileNotFoundError):
        return None


def render(home: Path, job: Job, index: int, output_format: OutputFormat, quality: int,
           files: FilesStore | None = None) -> Rendered | None:
    """The job's `index`-th image in `output_format`, or None if there is no such file. `files`: the files
    store (default: the data home's folders)."""
    images = job.images()
    path: Path | bytes | None = None
    if 0 <= index < len(images):
        if files is not None and not files.local:
            path = _stored_image(files, images[index])
        else:
            path = image_path(files.root if isinstance(files, LocalFiles) else home, images[index])
    if path is None:
        return None
    return Rendered(index, rendered_name(images[index], output_format), outputs.MEDIA_TYPES[output_format],
                    outputs.encode(path, output_format, quality))


class WorkflowRunner:
    def __init__(self, jobs: JobService, settings: Settings, sources: ImageSources) -> None:
        self.jobs = jobs
        self.settings = settings
        self.sources = sources
        self._deliveries: set[asyncio.Task[None]] = set()

    async def prompt_for(self, workflow: dict[str, Any], inputs: list[PublicInput],
                         values: dict[str, Any]) -> dict[str, Any]:
        """The workflow with each given value set on its node input (images stored first); raises InputRefused."""
        prompt = copy.deepcopy(workflow)
        for item in inputs:
            value = values.get(item.name)
            if value is None:
                continue
            if item.kind == "image":
                value = await resolve_image(item.name, value if isinstance(value, str | ImageInput)
                                            else ImageInput.model_validate(value), self.sources)
            prompt[item.node_id].setdefault("inputs", {})[item.input] = value
        return prompt

    async def submit(self, prompt: dict[str, Any], *, user: str, timeout_s: float, webhook_url: str,
                     workflow_name: str) -> Submission:
        return await self.jobs.submit(NewJob(prompt, {"workflow_name": workflow_name}, user=user,
                                             timeout_s=timeout_s, webhook_url=webhook_url))

    async def wait(self, job_id: str, wait_s: float) -> Job | None:
        """The job once it ended, or as it is after `wait_s` (capped by the configuration)."""
        limit = min(wait_s, self.settings.sync_wait_max_s)
        if limit > 0:
            try:
                async with asyncio.timeout(limit):
                    async for event in self.jobs.follow(job_id, 0):
                        if is_terminal(event.type):
                            break
            except TimeoutError:
                pass
        return await self.jobs.job(job_id)

    async def deliver(self, job: Job, output_format: OutputFormat, quality: int,
                      destination: str | None) -> list[Rendered]:
        """Every image of a finished job in the format asked for, written to `destination` when given."""
        home = self.settings.home
        rendered = []
        for index in range(len(job.images())):
            image = await asyncio.to_thread(render, home, job, index, output_format, quality, self.sources.files)
            if image is None:
                continue
            if destination:
                written = await asyncio.to_thread(outputs.write, self.settings, f"{destination}{job.job_id}/",
                                                  image.filename, image.data)
                image = Rendered(image.index, image.filename, image.media_type, image.data, written)
            rendered.append(image)
        return rendered

    def deliver_later(self, job_id: str, output_format: OutputFormat, quality: int, destination: str) -> None:
        """Write the job's images to `destination` once it completes (this gateway process follows it)."""
        task = asyncio.create_task(self._deliver_when_done(job_id, output_format, quality, destination))
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)

    async def _deliver_when_done(self, job_id: str, output_format: OutputFormat, quality: int,
                                 destination: str) -> None:
        async for event in self.jobs.follow(job_id, 0):
            if is_terminal(event.type):
                break
        job = await self.jobs.job(job_id)
        if job is None or job.status != JobStatus.COMPLETED:
            return
        try:
            await self.deliver(job, output_format, quality, destination)
        except Exception:  # a storage error: the job stays completed, its images stay on this server
            log.exception("writing a run's outputs failed", extra=log_fields(job=job_id, destination=destination))
