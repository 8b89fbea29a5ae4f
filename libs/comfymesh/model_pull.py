"""Downloading a model file into a model folder: from allowed hosts only, resumable, hash-checked, bounded.

Every hop (the URL and each redirect, at most MAX_REDIRECTS) must name a host of the allowed list and pass the
outbound policy (its addresses resolved and checked before any connection, then connected to as checked). The
file grows as `<name>.part` beside its final place: a pull that stops midway resumes from there with a Range
request (a server that ignores it starts the file over). The SHA-256 is checked before the file takes its
name; a mismatch deletes it.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import posixpath
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import httpx

from comfymesh.outbound import OutboundPolicy, OutboundRefused, parse_url

MAX_REDIRECTS = 5
CHUNK = 1024 * 1024
SHA256 = re.compile(r"^[0-9a-f]{64}$")
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,199}$")
Progress = Callable[[int, int | None], None]  # (bytes so far, total or None)


class PullState(StrEnum):
    """Where a model pull the server runs stands (GET /v1/models/pulls/{id})."""

    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class PullError(Exception):
    """The pull cannot be done (a refused host, a bad hash, a limit, an error status); the message says why."""


@dataclass(frozen=True)
class PullPolicy:
    """Where models may come from and how much a pull may take."""

    outbound: OutboundPolicy
    hosts: tuple[str, ...]
    max_bytes: int
    timeout_s: float

    def check_host(self, url: httpx.URL) -> None:
        host = url.host.lower().rstrip(".")
        if not any(host == allowed or host.endswith("." + allowed) for allowed in self.hosts):
            raise PullError(f"{host} is not a host models may be pulled from (COMFYMESH_MODEL_PULL_HOSTS: "
                            f"{', '.join(self.hosts) or 'none'})")


def file_name(url: str, name: str | None) -> str:
    """The file's name: `name`, else the URL path's last part; a plain safetensors name (no folders)."""
    chosen = name or posixpath.basename(httpx.URL(url).path)
    if not SAFE_NAME.match(chosen) or not chosen.lower().endswith((".safetensors", ".sft")):
        raise PullError(f"{chosen!r} is not a file name a model may take: letters, digits and ._+- ending in "
                        ".safetensors (pickle formats can run code); give --name")
    return chosen


def check_sha256(sha256: str | None) -> str | None:
    if sha256 is None or sha256 == "":
        return None
    if not SHA256.match(sha256.lower()):
        raise PullError("sha256 must be 64 hexadecimal digits")
    return sha256.lower()


async def pull(url: str, folder: Path, policy: PullPolicy, *, name: str | None = None, sha256: str | None = None,
               progress: Progress | None = None) -> Path:
    """Download `url` into `folder` (created if needed) and answer the file's path; raises PullError, or
    OutboundRefused before connecting to a refused address."""
    expected = check_sha256(sha256)
    target = folder / file_name(url, name)
    if target.exists():
        if expected is None or await asyncio.to_thread(_digest, target) == expected:
            return target
        raise PullError(f"{target.name} already exists with another sha256; remove it first")
    folder.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    try:
        async with asyncio.timeout(policy.timeout_s):
            await _download(url, partial, policy, progress)
    except TimeoutError:
        raise PullError(f"the download took longer than {policy.timeout_s:g} s (it resumes from where it "
                        "stopped when pulled again)") from None
    if expected is not None and (actual := await asyncio.to_thread(_digest, partial)) != expected:
        partial.unlink()
        raise PullError(f"sha256 mismatch: the file is {actual}, {expected} was asked for (file deleted)")
    partial.replace(target)
    return target


async def _download(url: str, partial: Path, policy: PullPolicy, progress: Progress | None) -> None:
    async with httpx.AsyncClient(follow_redirects=False, trust_env=False, timeout=httpx.Timeout(30.0)) as client:
        for _ in range(MAX_REDIRECTS + 1):
            parsed = parse_url(url)
            policy.check_host(parsed)
            destination = await policy.outbound.resolve(url)  # OutboundRefused before any connection
            have = partial.stat().st_size if partial.exists() else 0
            host = destination.url.raw_host.decode("ascii")
            headers = {"host": destination.url.netloc.decode("ascii"), "accept-encoding": "identity"}
            if have:
                headers["range"] = f"bytes={have}-"
            # TLS still names and verifies the host, although the connection goes to its checked address
            request = client.build_request("GET", destination.pinned_url(), headers=headers,
                                           extensions={} if _is_address(host) else {"sni_hostname": host})
            response = await client.send(request, stream=True)
            try:
                if response.is_redirect:
                    url = str(parsed.join(response.headers.get("location", "")))
                    continue
                if response.status_code == 416 and have:  # the part is already whole
                    return
                if response.status_code >= 400:
                    raise PullError(f"{parsed.host} answered HTTP {response.status_code} for {parsed.path}")
                resumed = response.status_code == 206
                total = _total(response, have if resumed else 0)
                if total is not None and total > policy.max_bytes:
                    raise PullError(f"the file is {total} bytes, over the limit of {policy.max_bytes} "
                                    "(COMFYMESH_MODEL_PULL_MAX_BYTES)")
                await _write(response, partial, have if resumed else 0, total, policy.max_bytes, progress)
                return
            finally:
                await response.aclose()
    raise PullError(f"more than {MAX_REDIRECTS} redirects")


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _total(response: httpx.Response, offset: int) -> int | None:
    length = response.headers.get("content-length", "")
    return offset + int(length) if length.isdigit() else None


async def _write(response: httpx.Response, partial: Path, offset: int, total: int | None, max_bytes: int,
                 progress: Progress | None) -> None:
    done = offset
    with partial.open("r+b" if offset else "wb") as handle:
        handle.seek(offset)
        handle.truncate()
        async for chunk in response.aiter_raw(CHUNK):
            done += len(chunk)
            if done > max_bytes:
                raise PullError(f"the file is over the limit of {max_bytes} bytes (COMFYMESH_MODEL_PULL_MAX_BYTES)")
            handle.write(chunk)
            if progress is not None:
                progress(done, total)
    if total is not None and done < total:
        raise PullError(f"the connection closed after {done} of {total} bytes (pull again to resume)")


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


__all__ = ["OutboundRefused", "PullError", "PullPolicy", "file_name", "pull"]
