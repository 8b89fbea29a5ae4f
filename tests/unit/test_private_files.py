"""Secrets the services write or keep are readable by their owner only (0600)."""

from __future__ import annotations

from pathlib import Path

from comfymesh.config import Settings
from comfymesh.orchestrator.webhooks import load_secret


def test_the_webhook_secret_file_is_private(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, webhook_secret="")
    secret = load_secret(settings)
    path = tmp_path / "webhook_secret"
    assert oct(path.stat().st_mode & 0o777) == "0o600" and len(secret) >= 32
    path.chmod(0o644)  # written by hand, or by an older version
    assert load_secret(settings) == secret
    assert oct(path.stat().st_mode & 0o777) == "0o600"
