"""Saved workflows' inputs and outputs: URL inputs' limits, where outputs may be written, how long a run waits."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator


class WorkflowSettings(BaseModel):
    """The saved-workflow part of `Settings` (COMFYMESH_URL_INPUT_*, COMFYMESH_OUTPUT_*, COMFYMESH_PUBLIC_URL)."""

    model_config = ConfigDict(frozen=True)

    public_url: str = Field("", pattern=r"^(https?://[^?#\s]+)?$",
                            description="the gateway's address as clients reach it (scheme://host[:port][/path]); "
                                        "webhooks carry output URLs under it (default http://<host>:<port>)")
    url_input_max_bytes: int = Field(32 * 1024 * 1024, ge=1024, description="largest image a run's URL input "
                                                                            "may download")
    url_input_timeout_s: float = Field(20.0, gt=0, le=600, description="longest a URL input's download may take")
    sync_wait_max_s: float = Field(300.0, ge=0, le=3600, description="longest a run request may wait for its "
                                                                     "job (`wait_s`) before answering 202")
    output_destinations: str = Field("", description="comma-separated fsspec URL prefixes a run may write its "
                                                     "outputs under (e.g. s3://bucket/renders/); empty: none")
    output_storage_options: SecretStr = Field(
        SecretStr(""), description="JSON object of fsspec storage options per protocol, e.g. "
                                   '{"s3": {"key": ..., "secret": ..., "endpoint_url": ...}}: the only '
                                   "credentials an output destination is written with (never a request's)")

    @field_validator("output_storage_options")
    @classmethod
    def _json_object_of_objects(cls, value: SecretStr) -> SecretStr:
        raw = value.get_secret_value()
        if raw:
            try:
                parsed = json.loads(raw)
            except ValueError:
                raise ValueError("must be a JSON object such as {\"s3\": {\"endpoint_url\": ...}}") from None
            if not isinstance(parsed, dict) or not all(isinstance(v, dict) for v in parsed.values()):
                raise ValueError("must map each protocol (s3, gcs, ...) to an object of fsspec options")
        return value

    def output_prefixes(self) -> list[str]:
        return [prefix.strip() for prefix in self.output_destinations.split(",") if prefix.strip()]

    def storage_options(self, protocol: str) -> dict[str, Any]:
        """fsspec's options for `protocol`, from the server's configuration alone."""
        raw = self.output_storage_options.get_secret_value()
        return dict(json.loads(raw).get(protocol, {})) if raw else {}
