"""The s3:// backend: objects in one bucket under a prefix, through s3fs with its listing caches off, so a
name another host deleted or wrote is seen at once (`exists()` asks the server, every time)."""

from __future__ import annotations

import contextlib
from typing import Any

from comfymesh.files._store import FileEntry, FilesUnavailable


def s3_error_code(exc: BaseException) -> str:
    """The S3 error code (SignatureDoesNotMatch, NoSuchBucket, ...) behind an s3fs exception, else its type."""
    seen: BaseException | None = exc
    while seen is not None:
        response = getattr(seen, "response", None)
        if isinstance(response, dict) and response.get("Error", {}).get("Code"):
            return str(response["Error"]["Code"])
        seen = seen.__cause__ or seen.__context__
    return type(exc).__name__


class S3Files:
    """`s3://bucket/prefix` with s3fs options (key, secret, endpoint_url, client_kwargs, ...)."""

    def __init__(self, url: str, options: dict[str, Any]) -> None:
        import s3fs  # only where an s3:// store is configured

        self.url = url.rstrip("/")
        self.root = self.url.split("://", 1)[1]
        self.bucket = self.root.split("/", 1)[0]
        # no listing cache and no shared instance: another client's delete must show at once
        self.fs = s3fs.S3FileSystem(**options, use_listings_cache=False, skip_instance_cache=True)

    @property
    def local(self) -> bool:
        return False

    def _path(self, key: str) -> str:
        return f"{self.root}/{key}"

    def read(self, key: str) -> bytes:
        return bytes(self.fs.cat_file(self._path(key)))

    def write(self, key: str, data: bytes) -> None:
        self.fs.pipe_file(self._path(key), data)

    def claim(self, key: str, data: bytes) -> bool:
        try:
            self.fs.pipe_file(self._path(key), data, mode="create")  # If-None-Match: *, the server decides
            return True
        except FileExistsError:
            return False
        except OSError as exc:
            # s3fs names it FileExistsError only when the server echoes the condition; SeaweedFS does not
            if s3_error_code(exc) == "PreconditionFailed":
                return False
            raise

    def exists(self, key: str) -> bool:
        return bool(self.fs.exists(self._path(key)))

    def version(self, key: str) -> str:
        """The object's ETag (its content's MD5 for a single-part write): changes when the object does."""
        info = self.fs.info(self._path(key))
        return str(info.get("ETag") or f"{info.get('size')}:{info.get('LastModified')}").strip('"')

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):  # already gone: what a delete wants
            self.fs.rm_file(self._path(key))

    def entries(self, prefix: str) -> list[FileEntry]:
        try:
            found = self.fs.find(self._path(prefix), detail=True)
        except FileNotFoundError:
            return []
        entries = []
        for path, info in found.items():
            if info.get("type") == "directory":
                continue
            modified = info.get("LastModified")
            stamp = modified.timestamp() if hasattr(modified, "timestamp") else 0.0
            entries.append(FileEntry(path[len(self.root) + 1:], int(info.get("size", 0)), stamp))
        return entries

    def presign(self, key: str, ttl_s: int) -> str | None:
        return str(self.fs.sign(self._path(key), expiration=ttl_s))

    def check(self) -> None:
        """One cheap authenticated call on the bucket: a wrong secret or a missing bucket fails here."""
        try:
            self.fs.call_s3("list_objects_v2", Bucket=self.bucket, MaxKeys=1)
        except Exception as exc:  # any failure means not ready; its S3 code says why
            raise FilesUnavailable(s3_error_code(exc), str(exc) or type(exc).__name__) from exc
