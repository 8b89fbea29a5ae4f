"""Where outputs, uploads and input images live: the data home's folders, or an S3 bucket several hosts share."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

# the schemes COMFYMESH_FILES_URL accepts; comfymesh.files has a backend for each
FILES_SCHEMES = ("file", "s3")


def files_folder(url: str) -> Path:
    """The folder a file:// files URL names, resolved."""
    return Path(unquote(urlparse(url).path)).expanduser().resolve()



def storage_options_object(value: SecretStr) -> SecretStr:
    """A *_STORAGE_OPTIONS setting's check: empty, or a JSON object (s3fs's keyword arguments)."""
    raw = value.get_secret_value()
    if raw:
        try:
            parsed = json.loads(raw)
        except ValueError:
            raise ValueError('must be a JSON object such as {"endpoint_url": ...}') from None
        if not isinstance(parsed, dict):
            raise ValueError('must be a JSON object such as {"endpoint_url": ...}')
    return value

class FilesSettings(BaseModel):
    """The files part of `Settings` (COMFYMESH_FILES_*)."""

    model_config = ConfigDict(frozen=True)

    files_url: str = Field("", description="where outputs, uploads and LoadImage's inputs live: the data home "
                                           "(file://<home>, the default) or s3://bucket/prefix shared by "
                                           "gateways, stages and orchestrators on several hosts")
    files_storage_options: SecretStr = Field(
        SecretStr(""), description='JSON object of s3fs options for an s3:// files_url, e.g. {"key": ..., '
                                   '"secret": ..., "endpoint_url": ...} (empty: the AWS environment and profile)')
    files_view_redirect: bool = Field(False, description="an s3:// files_url: /view answers 307 to a presigned "
                                                         "URL instead of streaming the object through the gateway")
    files_presign_ttl_s: int = Field(300, ge=1, le=7 * 24 * 3600,
                                     description="lifetime of the presigned URLs /view redirects to")

    @field_validator("files_url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        if value:
            scheme = value.split("://", 1)[0].lower() if "://" in value else ""
            if scheme not in FILES_SCHEMES:
                raise ValueError(f"{value.split('://', 1)[0] if '://' in value else value!r} is no accepted "
                                 f"scheme: use one of {', '.join(s + '://' for s in FILES_SCHEMES)}")
        return value

    @field_validator("files_storage_options")
    @classmethod
    def _json_object(cls, value: SecretStr) -> SecretStr:
        return storage_options_object(value)

    def files_options(self) -> dict[str, Any]:
        """s3fs's options, from the server's configuration alone."""
        raw = self.files_storage_options.get_secret_value()
        return dict(json.loads(raw)) if raw else {}
