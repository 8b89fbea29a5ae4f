"""Traces: where every service exports its OpenTelemetry spans, and the host name they carry."""

from __future__ import annotations

from pydantic import AliasChoices, BaseModel, ConfigDict, Field


class TelemetrySettings(BaseModel):
    """The tracing part of `Settings`: off (no endpoint) unless an OTLP collector is named."""

    model_config = ConfigDict(frozen=True, populate_by_name=True)

    # OpenTelemetry's own variable works too, so a deployment that sets it for every container needs nothing more
    otlp_endpoint: str = Field(
        "", pattern=r"^(https?://[^\s/]+/?)?$",
        validation_alias=AliasChoices("COMFYMESH_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"),
        description="OTLP/gRPC collector every service exports its spans to, e.g. http://collector:4317 "
                    "(also read from OTEL_EXPORTER_OTLP_ENDPOINT; empty: no tracing, at no cost)")
    trace_host_name: str = Field("", max_length=255, description="host.name on this process's spans "
                                                                 "(empty: the machine's host name)")
