"""Traces: where every service exports its OpenTelemetry spans, and the host name they carry."""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator

OTLP_ENDPOINT_VARIABLES = ("COMFYMESH_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


class TelemetrySettings(BaseModel):
    """The tracing part of `Settings`: off (no endpoint) unless an OTLP collector is named."""

    model_config = ConfigDict(frozen=True, populate_by_name=True)

    # OpenTelemetry's own variable works too, so a deployment that sets it for every container needs nothing more
    otlp_endpoint: str = Field(
        "", validation_alias=AliasChoices(*OTLP_ENDPOINT_VARIABLES),
        description="OTLP/gRPC collector every service exports its spans to, e.g. http://collector:4317 "
                    "(also read from OTEL_EXPORTER_OTLP_ENDPOINT; empty: no tracing, at no cost)")
    trace_host_name: str = Field("", max_length=255, description="host.name on this process's spans "
                                                                 "(empty: the machine's host name)")

    @field_validator("otlp_endpoint")
    @classmethod
    def _collector_url(cls, value: str) -> str:
        parts = urlsplit(value.strip())
        if value and (parts.scheme not in ("http", "https") or not parts.hostname):
            raise ValueError("must be the http:// (plaintext) or https:// URL of an OTLP/gRPC collector, e.g. "
                             f"http://collector:4317 (read from {OTLP_ENDPOINT_VARIABLES[1]} when unset)")
        return value.strip()
