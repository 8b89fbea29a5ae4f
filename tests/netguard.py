"""For tests of outbound requests: a guard that records every connect this process makes and refuses any to
an address off this machine (so a test of a refused address can show the refusal came before any connect),
and a real HTTP receiver on a loopback address."""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest


class ConnectGuard:
    def __init__(self) -> None:
        self.attempts: list[tuple[str, int]] = []  # (address, port) of every TCP connect, allowed or not
        self.blocked: list[tuple[str, int]] = []  # the ones off this machine, refused by the guard

    def to(self, host: str) -> list[tuple[str, int]]:
        return [attempt for attempt in self.attempts if attempt[0] == host]


@contextmanager
def guard_connections(monkeypatch: pytest.MonkeyPatch) -> Iterator[ConnectGuard]:
    """Guard every connect of this process while inside (the test's fixture wraps it)."""
    guard = ConnectGuard()
    connect, connect_ex = socket.socket.connect, socket.socket.connect_ex

    def checked(sock: socket.socket, address: Any) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            target = (str(address[0]), int(address[1]))
            guard.attempts.append(target)
            if not ipaddress.ip_address(target[0].split("%", 1)[0]).is_loopback:
                guard.blocked.append(target)
                raise ConnectionRefusedError(f"test guard: no connection may leave this machine ({target[0]})")

    def guarded_connect(sock: socket.socket, address: Any) -> None:
        checked(sock, address)
        connect(sock, address)

    def guarded_connect_ex(sock: socket.socket, address: Any) -> int:
        checked(sock, address)
        return connect_ex(sock, address)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", guarded_connect_ex)
    yield guard
    assert not guard.blocked, f"connections off this machine were attempted: {guard.blocked}"


class Receiver:
    """Answers every POST with `status` (and `location`, for a redirect) and records (headers, body), the
    header names in lower case."""

    def __init__(self, host: str = "127.0.0.1", status: int = 204, location: str = "") -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                receiver.received.append(({name.lower(): value for name, value in self.headers.items()}, body))
                self.send_response(status)
                if location:
                    self.send_header("location", location)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.port = int(self.server.server_address[1])
        self.url = f"http://{host}:{self.port}/hook"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
