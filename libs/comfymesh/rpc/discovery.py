"""Replica addresses found in DNS: `dns:///name:port` stands for every A record of `name` at `port`.

The resolver is a plain function (name -> IPv4 addresses) so tests and operators can swap it; the default
reads COMFYMESH_HOSTS_FILE (an /etc/hosts-format file, a test/ops aid) before asking DNS.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

from comfymesh.config.discovery import DnsTarget

Resolver = Callable[[str], list[str]]


def hosts_file_entries(path: Path, name: str) -> list[str]:
    """The IPv4 addresses an /etc/hosts-format file gives `name` (in file order; unreadable file: none)."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    found: list[str] = []
    for line in lines:
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 2 and name in fields[1:] and ":" not in fields[0] and fields[0] not in found:
            found.append(fields[0])
    return found


def dns_addresses(name: str) -> list[str]:
    """Every A record of `name` (none when it does not resolve)."""
    try:
        infos = socket.getaddrinfo(name, None, family=socket.AF_INET, type=socket.SOCK_STREAM)
    except OSError:
        return []
    return sorted({str(info[4][0]) for info in infos})


def make_resolver(hosts_file: str) -> Resolver:
    """The default resolver: `hosts_file`'s entries for a name when it has some, else DNS."""
    if not hosts_file:
        return dns_addresses
    path = Path(hosts_file).expanduser()

    def resolve(name: str) -> list[str]:
        return hosts_file_entries(path, name) or dns_addresses(name)

    return resolve


def expand(target: DnsTarget, resolve: Resolver) -> list[str]:
    """The target's replica addresses (`ip:port`), one per record."""
    return [f"{address}:{target.port}" for address in resolve(target.name)]


# what a gateway uses for a `dns:///` orchestrator address: gRPC's own resolver re-resolves, round_robin spreads
# calls over every address and client-side health checking leaves out an orchestrator that is not SERVING
BALANCED_SERVICE_CONFIG = ('{"loadBalancingConfig": [{"round_robin": {}}], '
                           '"healthCheckConfig": {"serviceName": ""}}')

__all__ = ["BALANCED_SERVICE_CONFIG", "Resolver", "dns_addresses", "expand", "hosts_file_entries", "make_resolver"]
