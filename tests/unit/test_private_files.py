"""Secrets the services write or keep are readable by their owner only (0600)."""

from __future__ import annotations

from pathlib import Path

import pytest

from comfymesh.orchestrator.webhooks import load_secret


def test_the_webhook_secret_file_is_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COMFYMESH_WEBHOOK_SECRET", raising=False)
    secret = load_secret(tmp_path)
    path = tmp_path / "webhook_secret"
    assert oct(path.stat().st_mode & 0o777) == "0o600" and len(secret) >= 32
    path.chmod(0o644)  # written by hand, or by an older version
    assert load_secret(tmp_path) == secret
    assert oct(path.stat().st_mode & 0o777) == "0o600"
