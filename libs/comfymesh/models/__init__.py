"""Model files in an S3 prefix (COMFYMESH_MODELS_URL=s3://bucket/prefix): listed by every host, fetched by
digest into each host's own cache. The model-folder registry (`comfymesh.catalog.model_folders`) uses them."""

from __future__ import annotations

from comfymesh.models._host_cache import HostModelCache, ModelDigestMismatch
from comfymesh.models._remote import ModelEntry, RemoteModels

__all__ = ["HostModelCache", "ModelDigestMismatch", "ModelEntry", "RemoteModels"]
