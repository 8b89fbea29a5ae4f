"""Whether an address a service listens on stays on this machine (the start-up checks of every service)."""

from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    """`localhost` or a loopback IP; any other name may resolve to an interface other machines reach."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def listens_locally(listen: str) -> bool:
    """Whether a gRPC listen address (`host:port`, `[v6]:port`, `unix:path`) is reachable from this machine only."""
    if listen.startswith(("unix:", "unix-abstract:")):
        return True
    host, _, _ = listen.rpartition(":")
    return is_loopback(host)
