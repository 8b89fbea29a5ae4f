"""Whether a service may serve with its files store: one check at start and on /readyz, its S3 code logged."""

from __future__ import annotations

import logging

from comfymesh.files._store import FilesStore, FilesUnavailable
from comfymesh.logs import log_fields

log = logging.getLogger("comfymesh.files")


def files_problem(files: FilesStore) -> FilesUnavailable | None:
    """None when `files` answers an authenticated call; else the failure, logged with its S3 error code."""
    try:
        files.check()
        return None
    except FilesUnavailable as exc:
        log.error("files store unavailable", extra=log_fields(files_url=files.url, s3_error=exc.code,
                                                              reason=str(exc)))
        return exc
