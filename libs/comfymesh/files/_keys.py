"""Keys as clients name files: a folder type, a subfolder and a name, refused if they climb out."""

from __future__ import annotations

import posixpath

FOLDER_TYPES = ("output", "input", "temp")


class BadKey(ValueError):
    """A name that leaves its folder (`..`, an absolute path, a NUL): refused, never resolved."""


def safe_key(folder_type: str, subfolder: str, filename: str) -> str:
    """`<type>/<subfolder>/<name>` normalised, or BadKey when any part would leave the type's folder."""
    if folder_type not in FOLDER_TYPES:
        raise BadKey(f"type must be one of {', '.join(FOLDER_TYPES)}")
    parts = [part for part in (subfolder.replace("\\", "/"), filename.replace("\\", "/")) if part]
    joined = "/".join(parts)
    if not filename or "\x00" in joined or joined.startswith("/"):
        raise BadKey("the file must be named inside its folder")
    normal = posixpath.normpath(joined)
    if normal == "." or normal.startswith("../") or normal == ".." or "/../" in f"/{normal}/":
        raise BadKey("the path leaves its folder")
    return f"{folder_type}/{normal}"
