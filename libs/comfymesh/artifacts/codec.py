"""Node values <-> wire `Value`s: tensors go to the artifact store, small values travel as JSON."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from comfymesh.artifacts.store import ArtifactStore
from comfymesh.contracts.values import TENSOR_TYPES, TensorRef
from comfymesh.v1 import common_pb2

# the types whose values are dicts of arrays (and JSON values), with the array a TensorRef describes
DICT_PRIMARY = {"LATENT": "samples", "CLIP_VISION_OUTPUT": "image_embeds"}
# a conditioning entry's extras that are lists of arrays (ReferenceLatent's reference_latents) → their lengths;
# each array is stored as `<entry>.<key>[<j>]`
ARRAY_LISTS = "$array_lists"


def to_numpy(value: Any) -> np.ndarray:
    """An array from numpy or torch without importing torch (the imaging stage has none)."""
    if hasattr(value, "detach"):
        tensor = value.detach().cpu()
        if str(tensor.dtype) == "torch.bfloat16":
            tensor = tensor.float()
        return np.asarray(tensor.numpy())
    return np.asarray(value)


def _is_array(value: Any) -> bool:
    return hasattr(value, "detach") or isinstance(value, np.ndarray)


def _bundle(type_name: str, value: Any) -> tuple[dict[str, np.ndarray], dict[str, Any], str]:
    if type_name in ("IMAGE", "MASK", "SIGMAS"):
        return {"value": to_numpy(value)}, {}, "value"
    if type_name == "GUIDER":
        tensors, conds = {}, {}
        for role, conditioning in value["conds"].items():
            parts, conds[role], _ = _bundle("CONDITIONING", conditioning)
            tensors.update({f"{role}/{name}": array for name, array in parts.items()})
        return tensors, {"spec": {k: v for k, v in value.items() if k != "conds"}, "conds": conds}, ""
    if type_name in DICT_PRIMARY:
        tensors = {key: to_numpy(item) for key, item in value.items() if _is_array(item)}
        extras = {key: item for key, item in value.items() if not _is_array(item)}
        return tensors, extras, DICT_PRIMARY[type_name]
    # CONDITIONING: [[cond, {extras}], ...]
    tensors, extras_list = {}, []
    for index, (cond, extras) in enumerate(value):
        tensors[f"{index}.cond"] = to_numpy(cond)
        plain: dict[str, Any] = {}
        lists: dict[str, int] = {}
        for key, item in extras.items():
            if _is_array(item):
                tensors[f"{index}.{key}"] = to_numpy(item)
            elif isinstance(item, list) and item and all(_is_array(a) for a in item):
                tensors.update({f"{index}.{key}[{j}]": to_numpy(a) for j, a in enumerate(item)})
                lists[key] = len(item)
            else:
                plain[key] = item
        if lists:
            plain[ARRAY_LISTS] = lists
        extras_list.append(plain)
    return tensors, {"entries": extras_list}, "0.cond" if value else ""


def _unbundle(type_name: str, tensors: dict[str, np.ndarray], extras: dict[str, Any]) -> Any:
    if type_name in ("IMAGE", "MASK", "SIGMAS"):
        return tensors["value"]
    if type_name == "GUIDER":
        conds = {role: _unbundle("CONDITIONING", {name.removeprefix(f"{role}/"): array for name, array in tensors.items()
                                                  if name.startswith(f"{role}/")}, plain)
                 for role, plain in extras["conds"].items()}
        return {**extras["spec"], "conds": conds}
    if type_name in DICT_PRIMARY:
        return {**tensors, **extras}
    entries = []
    for index, plain in enumerate(extras.get("entries", [])):
        prefix = f"{index}."
        extra = dict(plain)
        lists = extra.pop(ARRAY_LISTS, {})
        extra.update({name[len(prefix):]: array for name, array in tensors.items()
                      if name.startswith(prefix) and name != f"{index}.cond" and not name.endswith("]")})
        extra.update({key: [tensors[f"{prefix}{key}[{j}]"] for j in range(n)] for key, n in lists.items()})
        entries.append([tensors[f"{index}.cond"], extra])
    return entries


# a V3 MatchType output (ResizeImageMaskNode's) has the type of what the node was given
MATCH_TYPE = "COMFY_MATCHTYPE_V3"


def _matched_type(value: Any) -> str:
    """An IMAGE [B,H,W,C] or a MASK [B,H,W] array by its dimensions, as ComfyUI tells them apart."""
    dims = len(getattr(value, "shape", ()))
    return "IMAGE" if dims == 4 else "MASK" if dims in (2, 3) else MATCH_TYPE


def encode_value(type_name: str, value: Any, store: ArtifactStore) -> common_pb2.Value:
    """Store a node output and return the small message that refers to it."""
    if type_name == MATCH_TYPE:
        type_name = _matched_type(value)
    if type_name not in TENSOR_TYPES:
        return common_pb2.Value(type=type_name, json=json.dumps(value, sort_keys=True))
    tensors, extras, primary = _bundle(type_name, value)
    ref = store.put_bundle(tensors, {"type": type_name, "extras": json.dumps(extras, sort_keys=True)},
                           primary or None)
    return common_pb2.Value(type=type_name, tensor=ref.to_proto())


def decode_value(message: common_pb2.Value, store: ArtifactStore) -> Any:
    """The node value behind a wire `Value` (numpy arrays for tensors)."""
    if message.WhichOneof("payload") == "tensor":
        tensors, metadata = store.get_bundle(TensorRef.from_proto(message.tensor))
        return _unbundle(message.type, tensors, json.loads(metadata.get("extras", "{}")))
    return json.loads(message.json) if message.json else None

