"""How stage replicas are found and let go: DNS re-resolution, the hosts file read first, the stage's drain."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

DNS_SCHEME = "dns:///"


@dataclass(frozen=True)
class DnsTarget:
    name: str
    port: int

    def __str__(self) -> str:
        return f"{DNS_SCHEME}{self.name}:{self.port}"


def is_dns_target(address: str) -> bool:
    return address.startswith(DNS_SCHEME)


def parse_dns_target(address: str) -> DnsTarget:
    """`dns:///name:port` as a target; ValueError with the expected form otherwise."""
    name, _, port = address.removeprefix(DNS_SCHEME).rpartition(":")
    if not is_dns_target(address) or not name or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{address!r} is not a DNS replica address: write dns:///name:port")
    return DnsTarget(name, int(port))


def check_replica_addresses(value: str) -> str:
    """A stage's comma-separated replica addresses, refused when a `dns:///` one is malformed."""
    for address in value.split(","):
        if is_dns_target(address.strip()):
            parse_dns_target(address.strip())
    return value


class DiscoverySettings(BaseModel):
    """The discovery part of `Settings` (a replica address `dns:///name:port` is one of every A record of name)."""

    model_config = ConfigDict(frozen=True)

    dns_refresh_s: float = Field(5.0, gt=0, le=300, description="how often the orchestrator re-resolves a "
                                                                "`dns:///name:port` replica address (also at "
                                                                "once when a call finds a replica unavailable)")
    hosts_file: str = Field("", description="test/ops aid: an /etc/hosts-format file read before DNS when a "
                                            "`dns:///` replica address is resolved (its names win; others go "
                                            "to DNS)")
    stage_drain_s: float = Field(25.0, ge=0, le=3600, description="on SIGTERM a stage answers NOT_SERVING and "
                                                                  "waits this long at most for its calls to "
                                                                  "finish (keep it under the Kubernetes "
                                                                  "termination grace)")
