"""Node values between services, with their one codec: a reference to a stored tensor bundle, or a small
JSON value (literals, model handles).

A value crosses gRPC as `common_pb2.Value`; in Python a stored bundle is a `TensorRef`; a cache entry keeps
a value in protobuf's JSON mapping (`value_to_dict`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from comfymesh.v1 import common_pb2

# ComfyUI types whose values are tensor bundles; every other type is a JSON value (literals, model handles).
# A GUIDER is a JSON spec holding CONDITIONING values under "conds", so its tensors are stored too.
# A CLIP_VISION_OUTPUT is a dict of arrays (image_embeds, last_hidden_state, penultimate_hidden_states).
TENSOR_TYPES = frozenset({"IMAGE", "MASK", "LATENT", "CONDITIONING", "SIGMAS", "GUIDER", "CLIP_VISION_OUTPUT"})


@dataclass(frozen=True)
class TensorRef:
    """Where a stored bundle lives and what its primary tensor looks like."""

    uri: str
    dtype: str
    shape: tuple[int, ...]
    digest: str
    nbytes: int

    def to_proto(self) -> common_pb2.TensorRef:
        return common_pb2.TensorRef(uri=self.uri, dtype=self.dtype, shape=list(self.shape), digest=self.digest,
                                    nbytes=self.nbytes)

    @classmethod
    def from_proto(cls, message: common_pb2.TensorRef) -> TensorRef:
        return cls(uri=message.uri, dtype=message.dtype, shape=tuple(message.shape), digest=message.digest,
                   nbytes=message.nbytes)


def value_to_dict(value: common_pb2.Value) -> dict[str, Any]:
    """A node output as a cache entry holds it: protobuf's JSON mapping (int64 as strings), by hand,
    since json_format costs ~50 µs a value on the path of every cached node."""
    out: dict[str, Any] = {"type": value.type}
    kind = value.WhichOneof("payload")
    if kind == "tensor":
        ref = value.tensor
        out["tensor"] = {"uri": ref.uri, "dtype": ref.dtype, "shape": [str(d) for d in ref.shape],
                         "digest": ref.digest, "nbytes": str(ref.nbytes)}
    elif kind == "json":
        out["json"] = value.json
    return out


def value_from_dict(data: dict[str, Any]) -> common_pb2.Value:
    """The inverse of value_to_dict; also reads entries json_format wrote (fields at defaults left out)."""
    ref = data.get("tensor")
    if ref is not None:
        return common_pb2.Value(type=data.get("type", ""), tensor=common_pb2.TensorRef(
            uri=ref.get("uri", ""), dtype=ref.get("dtype", ""), shape=[int(d) for d in ref.get("shape", [])],
            digest=ref.get("digest", ""), nbytes=int(ref.get("nbytes", 0))))
    if "json" in data:
        return common_pb2.Value(type=data.get("type", ""), json=data["json"])
    return common_pb2.Value(type=data.get("type", ""))


def tensor_of(value: common_pb2.Value) -> TensorRef | None:
    """The stored bundle a value refers to; None for a JSON value."""
    return TensorRef.from_proto(value.tensor) if value.HasField("tensor") else None


# Two JSON forms that are not node values but execution markers (ComfyUI's execution semantics): a list
# output's items (OUTPUT_IS_LIST), and an ExecutionBlocker. Plain values never start with these keys.
LIST_KEY = "$list"
BLOCKED_KEY = "$blocked"


@dataclass(frozen=True)
class ExecutionBlocker:
    """ComfyUI's ExecutionBlocker: a node given one does not run and its outputs are blocked in turn; an
    output node given one does nothing, or fails with `message` when there is one."""

    message: str | None = None


def _marker(value: common_pb2.Value, key: str) -> Any:
    if value.WhichOneof("payload") != "json" or not value.json.startswith(f'{{"{key}"'):
        return None
    return json.loads(value.json)


def list_value(type_name: str, items: list[common_pb2.Value]) -> common_pb2.Value:
    """A list output (one value per item) as one wire value."""
    return common_pb2.Value(type=type_name, json=json.dumps({LIST_KEY: [value_to_dict(item) for item in items]}))


def list_items(value: common_pb2.Value) -> list[common_pb2.Value] | None:
    """The items of a list value; None for any other value."""
    data = _marker(value, LIST_KEY)
    return None if data is None else [value_from_dict(item) for item in data[LIST_KEY]]


def blocked_value(type_name: str, blocker: ExecutionBlocker) -> common_pb2.Value:
    """An ExecutionBlocker as a wire value."""
    return common_pb2.Value(type=type_name, json=json.dumps({BLOCKED_KEY: blocker.message}))


def blocker_of(value: common_pb2.Value) -> ExecutionBlocker | None:
    """The ExecutionBlocker a value stands for; None for any other value."""
    data = _marker(value, BLOCKED_KEY)
    return None if data is None else ExecutionBlocker(data[BLOCKED_KEY])


# A JSON value may hold stored bundles of its own (a MODEL handle's DiffSynth patch keeps its control image in
# the artifact store, since tensors never travel as JSON): each as {EMBEDDED_REF: {uri, dtype, shape, digest,
# nbytes}}, which tensors_in finds, so cache hits and retention count them.
EMBEDDED_REF = "$tensor_ref"


def embed_ref(ref: TensorRef) -> dict[str, Any]:
    return {EMBEDDED_REF: {"uri": ref.uri, "dtype": ref.dtype, "shape": list(ref.shape), "digest": ref.digest,
                           "nbytes": ref.nbytes}}


def embedded_ref(data: dict[str, Any]) -> TensorRef:
    ref = data[EMBEDDED_REF]
    return TensorRef(uri=ref["uri"], dtype=ref["dtype"], shape=tuple(int(d) for d in ref["shape"]),
                     digest=ref["digest"], nbytes=int(ref["nbytes"]))


def _embedded_refs(data: Any) -> list[TensorRef]:
    if isinstance(data, dict):
        if EMBEDDED_REF in data:
            return [embedded_ref(data)]
        return [ref for item in data.values() for ref in _embedded_refs(item)]
    if isinstance(data, list):
        return [ref for item in data for ref in _embedded_refs(item)]
    return []


def tensors_in(value: common_pb2.Value) -> list[TensorRef]:
    """Every stored bundle a value refers to, a list's items and bundles embedded in JSON values included (what
    a cache hit needs to exist)."""
    items = list_items(value)
    if items is not None:
        return [ref for item in items for ref in tensors_in(item)]
    ref = tensor_of(value)
    if ref is None and value.WhichOneof("payload") == "json" and EMBEDDED_REF in value.json:
        return _embedded_refs(json.loads(value.json))
    return [] if ref is None else [ref]


__all__ = ["BLOCKED_KEY", "EMBEDDED_REF", "LIST_KEY", "TENSOR_TYPES", "ExecutionBlocker", "TensorRef", "blocked_value",
           "blocker_of", "embed_ref", "embedded_ref", "list_items", "list_value", "tensor_of", "tensors_in", "value_from_dict", "value_to_dict"]
