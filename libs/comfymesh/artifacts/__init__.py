"""The data plane: tensors stored by content in an fsspec store, passed between services as refs."""

from comfymesh.artifacts.codec import decode_value, encode_value, to_numpy
from comfymesh.artifacts.store import ArtifactStore

__all__ = ["ArtifactStore", "decode_value", "encode_value", "to_numpy"]
