"""Content-addressed artifact store over fsspec: tensor bundles as safetensors, keyed by their digest."""

from __future__ import annotations

import hashlib
import json
import threading
import uuid
from collections import OrderedDict
from typing import Any

import fsspec
import numpy as np
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save as save_safetensors

from comfymesh import trace
from comfymesh.contracts.values import TensorRef

_DTYPE_NAMES = {
    np.dtype("float32"): "F32", np.dtype("float16"): "F16", np.dtype("float64"): "F64",
    np.dtype("int64"): "I64", np.dtype("int32"): "I32", np.dtype("uint8"): "U8", np.dtype("bool"): "BOOL",
}

_META_KEY = "comfymesh"


class ArtifactStore:
    """Tensor bundles by content: the same bytes are stored once, so a ref is safe to share and cache.

    `url` is any fsspec URL: `file:///abs/dir` (default), `memory://name` (tests), `s3://bucket/prefix`.
    """

    def __init__(self, url: str, memory_bytes: int = 256 * 2**20, options: dict[str, Any] | None = None) -> None:
        self.url = url.rstrip("/")
        self._protocol = self.url.split("://", 1)[0] if "://" in self.url else "file"
        # a remote store keeps no listing cache and no shared instance: an artifact retention deleted on
        # another host must not stay "existing" here (put_bundle would skip writing it)
        remote = {} if self._protocol in ("file", "memory") else {"use_listings_cache": False,
                                                                   "skip_instance_cache": True}
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **remote, **(options or {}))
        # recently written or read bundles by digest (content never changes under a digest): a stage
        # reading the same conditioning for every job skips the read and the re-hash
        self._recent: OrderedDict[str, bytes] = OrderedDict()
        self._recent_bytes = 0
        self._memory_bytes = memory_bytes
        self._lock = threading.Lock()

    @property
    def local(self) -> bool:
        """Whether lookups are local file-system calls (microseconds), not network round trips."""
        return self._protocol in ("file", "memory")

    def _remember(self, digest: str, data: bytes) -> None:
        if len(data) > self._memory_bytes // 4:
            return
        with self._lock:
            if digest in self._recent:
                self._recent.move_to_end(digest)
                return
            self._recent[digest] = data
            self._recent_bytes += len(data)
            while self._recent_bytes > self._memory_bytes:
                _, old = self._recent.popitem(last=False)
                self._recent_bytes -= len(old)

    def _recalled(self, digest: str) -> bytes | None:
        with self._lock:
            data = self._recent.get(digest)
            if data is not None:
                self._recent.move_to_end(digest)
            return data

    def _key(self, digest: str) -> str:
        return f"{self.root}/tensors/{digest[:2]}/{digest}.safetensors"

    def _uri(self, key: str) -> str:
        return f"{self._protocol}://{key}" if self._protocol != "file" else f"file://{key}"

    @trace.traced("artifact.put")
    def put_bundle(self, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None,
                   primary: str | None = None) -> TensorRef:
        """Store named tensors (+ string metadata) and return a ref to the primary one."""
        arrays = {name: np.ascontiguousarray(array) for name, array in tensors.items()}
        # one metadata key: safetensors writes several keys in hash order, which would change the digest
        data = save_safetensors(arrays, metadata={_META_KEY: json.dumps(metadata or {}, sort_keys=True)})
        digest = hashlib.sha256(data).hexdigest()
        key = self._key(digest)
        if not self.fs.exists(key):
            self._write_atomically(key, data)
        self._remember(digest, data)
        main = arrays[primary] if primary else next(iter(arrays.values()), np.zeros(0, np.float32))
        return TensorRef(uri=self._uri(key), dtype=_DTYPE_NAMES.get(main.dtype, str(main.dtype)),
                         shape=tuple(int(d) for d in main.shape), digest=digest, nbytes=len(data))

    @trace.traced("artifact.get")
    def get_bundle(self, ref: TensorRef) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """Read a bundle back, checking its digest so a damaged file never feeds a node."""
        data = self._recalled(ref.digest)
        if data is None:
            data = self.read_bytes(ref.uri)
            if hashlib.sha256(data).hexdigest() != ref.digest:
                raise OSError(f"artifact {ref.uri} does not match its digest {ref.digest[:12]}")
            self._remember(ref.digest, data)
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + header_len])
        return load_safetensors(data), json.loads(header.get("__metadata__", {}).get(_META_KEY, "{}"))

    def exists(self, ref: TensorRef) -> bool:
        return bool(self.fs.exists(self._path(ref.uri)))

    def read_bytes(self, uri: str) -> bytes:
        with self.fs.open(self._path(uri), "rb") as handle:
            return bytes(handle.read())

    def _path(self, uri: str) -> str:
        return uri.split("://", 1)[1] if "://" in uri else uri

    def _write_atomically(self, key: str, data: bytes) -> None:
        parent = key.rsplit("/", 1)[0]
        self.fs.makedirs(parent, exist_ok=True)
        if self._protocol == "file":
            # a reader never sees a half-written file: write aside, then rename into place
            temp = f"{key}.{uuid.uuid4().hex}.tmp"
            with self.fs.open(temp, "wb") as handle:
                handle.write(data)
            self.fs.mv(temp, key)
        else:
            with self.fs.open(key, "wb") as handle:
                handle.write(data)
