"""The data plane: tensors stored by content in an fsspec store, passed between services as refs."""

from comfymesh.artifacts.codec import TENSOR_TYPES, decode_value, encode_value, to_numpy
from comfymesh.artifacts.store import ArtifactStore, TensorRef

__all__ = ["TENSOR_TYPES", "ArtifactStore", "TensorRef", "decode_value", "encode_value", "to_numpy"]
