"""Where model files live: the data home's models folder (file://, the default) or an S3 prefix that every host
lists and fetches from, each host keeping a local copy of what it loads, by digest."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from comfymesh.config.files import storage_options_object

# the schemes COMFYMESH_MODELS_URL accepts; comfymesh.models has a backend for each
MODELS_SCHEMES = ("file", "s3")


def models_scheme_problem(url: str) -> str | None:
    """Why `url` is no models URL (an unknown scheme, named with the accepted ones), or None."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in MODELS_SCHEMES:
        return None
    return (f"models URL {url!r}: {scheme + '://' if scheme else 'no scheme'} is not accepted; use one of "
            f"{', '.join(s + '://' for s in MODELS_SCHEMES)}")


class ModelsSettings(BaseModel):
    """The models part of `Settings` (COMFYMESH_MODELS_*)."""

    model_config = ConfigDict(frozen=True)

    models_url: str = Field("", description="where model folders live: file://<folder> (default: <home>/models, "
                                            "plus the extra model paths) or s3://bucket/prefix holding "
                                            "<prefix>/checkpoints/..., listed by every host and fetched by digest")
    models_storage_options: SecretStr = Field(
        SecretStr(""), description="JSON object of s3fs options for an s3:// models_url (empty: those of "
                                   "COMFYMESH_FILES_STORAGE_OPTIONS)")
    models_cache_bytes: int = Field(200 * 2**30, ge=0,
                                    description="an s3:// models_url: the most bytes of fetched model files a host "
                                                "keeps under <home>/cache/models (least recently used go first; "
                                                "a file in use is never removed)")

    @field_validator("models_url")
    @classmethod
    def _known_models_scheme(cls, value: str) -> str:
        problem = models_scheme_problem(value) if value else None
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("models_storage_options")
    @classmethod
    def _models_options_object(cls, value: SecretStr) -> SecretStr:
        return storage_options_object(value)

    def models_options(self, files_options: dict[str, Any]) -> dict[str, Any]:
        """s3fs's options for the models URL: its own, else the files store's (often the same bucket's)."""
        raw = self.models_storage_options.get_secret_value()
        return dict(json.loads(raw)) if raw else dict(files_options)
