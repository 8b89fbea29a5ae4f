"""Run every service as its own process, restart one that dies (with backoff), stop all on Ctrl+C.

This module must not import grpc: children are started with fork+exec, and grpc does not survive a fork.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class ServiceSpec:
    name: str
    args: list[str]


@dataclass
class Supervised:
    spec: ServiceSpec
    process: subprocess.Popen[str] | None = None
    restarts: int = 0
    started_at: float = 0.0
    ready: threading.Event = field(default_factory=threading.Event)


class Supervisor:
    """Starts the services in order, relays their output, and keeps them running."""

    def __init__(self, specs: list[ServiceSpec], env: dict[str, str], echo: Callable[[str, str], None]) -> None:
        self.services = [Supervised(spec) for spec in specs]
        self.env = env
        self.echo = echo
        self.stopping = threading.Event()

    def _start(self, service: Supervised) -> None:
        service.ready.clear()
        service.process = subprocess.Popen(
            [sys.executable, "-m", *service.spec.args], env=self.env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, bufsize=1, start_new_session=True)
        service.started_at = time.monotonic()
        threading.Thread(target=self._relay, args=(service, service.process), daemon=True).start()

    def _relay(self, service: Supervised, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            if " listening on " in line:
                service.ready.set()
            self.echo(service.spec.name, line.rstrip("\n"))

    def start_all(self, timeout: float = 120.0) -> None:
        for service in self.services:
            self._start(service)
            if not service.ready.wait(timeout):
                raise RuntimeError(f"{service.spec.name} did not start within {timeout:.0f} s; see its log above")

    def watch(self) -> None:
        """Restart services that exit, with exponential backoff, until `stop` is called."""
        while not self.stopping.wait(0.5):
            for service in self.services:
                process = service.process
                if process is None or process.poll() is None:
                    continue
                # a service that ran a while before dying starts again at the shortest delay
                if time.monotonic() - service.started_at > 60:
                    service.restarts = 0
                delay = min(2 ** service.restarts * 0.5, 30.0)
                service.restarts += 1
                self.echo("up", f"{service.spec.name} exited with code {process.returncode}; "
                                f"restarting in {delay:.1f} s")
                if self.stopping.wait(delay):
                    return
                self._start(service)

    def stop(self, grace: float = 10.0) -> None:
        self.stopping.set()
        for service in reversed(self.services):
            if service.process and service.process.poll() is None:
                os.killpg(service.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for service in self.services:
            if service.process is None:
                continue
            try:
                service.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(service.process.pid, signal.SIGKILL)
                service.process.wait()
