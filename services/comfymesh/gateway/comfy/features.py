"""The server feature flags, sent by `/features` and as the websocket `feature_flags` reply (§9.2)."""

from __future__ import annotations

from typing import Any

from comfymesh.config import Settings


def server_features(settings: Settings) -> dict[str, Any]:
    # max_upload_size is what the gateway really accepts, so the frontend refuses bigger files itself
    return {"supports_preview_metadata": True, "max_upload_size": settings.max_body_bytes}
