"""Run every service as its own process, restart one that dies (with backoff), stop all on Ctrl+C.

This module must not import grpc: children are started with fork+exec, and grpc does not survive a fork.
Children started by the main thread die with the supervisor, however it ends (even kill -9): the kernel
sends them SIGKILL when it goes (Linux's parent-death signal; the services are safe to kill -9).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> Callable[[], None] | None:
    """A pre-exec step that makes the child get SIGKILL when the thread that started it ends (None off Linux).

    It runs in the child between fork and exec, so it only calls prctl, resolved here beforehand."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def arm() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the supervisor died before the signal was armed
            os._exit(1)

    return arm


@dataclass
class ServiceSpec:
    name: str
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)  # on top of the supervisor's (a pinned device)


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
        self._die_with_parent = _die_with_parent()

    def _start(self, service: Supervised) -> None:
        """Start a service in its own session (a terminal's signals reach the supervisor only, which
        stops the services in order). The kernel sends the parent-death signal when the *thread* that
        started the child ends, so it is armed only for children started by the main thread (`up`'s);
        a test harness restarting services from a worker thread must stop them itself."""
        service.ready.clear()
        main_thread = threading.current_thread() is threading.main_thread()
        service.process = subprocess.Popen(
            [sys.executable, "-m", *service.spec.args], env={**self.env, **service.spec.env}, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, bufsize=1, start_new_session=True,
            preexec_fn=self._die_with_parent if main_thread else None)
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
        """SIGTERM every service's process group, SIGKILL what is left after `grace` seconds."""
        self.stopping.set()
        for service in reversed(self.services):
            if service.process and service.process.poll() is None:
                _signal_group(service.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for service in self.services:
            if service.process is None:
                continue
            try:
                service.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(service.process.pid, signal.SIGKILL)
                service.process.wait()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def interrupt_on_stop_signals() -> None:
    """Make SIGINT, SIGTERM and SIGHUP (a closed terminal, a dropped ssh session) raise KeyboardInterrupt in
    the main thread, whatever was inherited: under a parent that ignores SIGINT, Python leaves it ignored.
    A SIGHUP ignored on purpose (`nohup`) stays ignored."""
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    if signal.getsignal(signal.SIGHUP) != signal.SIG_IGN:
        signal.signal(signal.SIGHUP, _interrupt)


def ignore_stop_signals() -> None:
    """While stopping: a second Ctrl+C (or the SIGHUP that follows a closed terminal) must not cut it short."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)


def _signal_group(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
        os.killpg(pid, signum)
