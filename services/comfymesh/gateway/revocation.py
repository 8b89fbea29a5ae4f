"""Sessions ended by `/logout` before they expire: their ids, kept until expiry in memory and in a small file
under the data root, so that a copied cookie stays dead across a gateway restart."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

log = logging.getLogger("comfymesh.gateway")


class RevokedSessions:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._until = self._load()  # session id (jti) -> when the session would have expired

    def _load(self) -> dict[str, float]:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("revoked sessions file unreadable; logged-out sessions may work again until they "
                        "expire", extra={"file": self.path.name, "error": type(exc).__name__})
            return {}
        now = time.time()
        return {str(jti): float(until) for jti, until in raw.items()
                if isinstance(until, int | float) and until > now} if isinstance(raw, dict) else {}

    def __contains__(self, jti: str) -> bool:
        return jti in self._until

    def revoke(self, jti: str, expires: float) -> None:
        now = time.time()
        self._until = {k: until for k, until in self._until.items() if until > now} | {jti: expires}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(self._until, handle)
        tmp.replace(self.path)


__all__ = ["RevokedSessions"]
