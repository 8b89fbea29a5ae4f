"""Outputs, uploads and user files behind one store: the data home (file://, the default) or an S3 bucket
(s3://bucket/prefix) that gateways and stages on several hosts share. Keys are `<type>/<subfolder>/<name>`.
"""

from __future__ import annotations

from typing import Any

from comfymesh.config.files import FILES_SCHEMES, files_folder
from comfymesh.files._keys import FOLDER_TYPES, BadKey, safe_key
from comfymesh.files._local import LocalFiles
from comfymesh.files._readiness import files_problem
from comfymesh.files._s3 import S3Files, s3_error_code
from comfymesh.files._store import FileEntry, FilesStore, FilesUnavailable


def open_files(url: str, options: dict[str, Any] | None = None) -> FilesStore:
    """The store at `url` (Settings.files); an unknown scheme is refused with the accepted ones."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme == "file":
        return LocalFiles(files_folder(url))
    if scheme == "s3":
        return S3Files(url, options or {})
    raise ValueError(f"files URL {url!r}: use one of {', '.join(s + '://' for s in FILES_SCHEMES)}")


__all__ = ["FOLDER_TYPES", "BadKey", "FileEntry", "FilesStore", "FilesUnavailable", "LocalFiles", "S3Files",
           "files_problem", "open_files", "s3_error_code", "safe_key"]
