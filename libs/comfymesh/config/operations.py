"""What operators scrape: where the orchestrator serves its Prometheus metrics."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class OperationsSettings(BaseModel):
    """The operations part of `Settings` (the gateway serves /metrics on its own port, always)."""

    model_config = ConfigDict(frozen=True)

    orchestrator_metrics: str = Field(
        "", pattern=r"^((\[[0-9A-Fa-f:.]+\]|[^\s:\[\]]*):\d{1,5})?$",
        description="host:port the orchestrator serves Prometheus /metrics on (empty: not served); "
                    "Kubernetes and the KEDA ScaledObjects scrape it")
