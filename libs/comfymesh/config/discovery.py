"""How stage replicas are found and let go: DNS re-resolution, the hosts file read first, the stage's drain."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


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
