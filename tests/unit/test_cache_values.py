"""Cache entries hold node outputs in protobuf's JSON mapping; the hand-written converters must agree."""

from __future__ import annotations

import pytest
from google.protobuf import json_format

from comfymesh.contracts.values import value_from_dict, value_to_dict
from comfymesh.v1 import common_pb2

VALUES = [
    common_pb2.Value(type="LATENT", tensor=common_pb2.TensorRef(
        uri="file:///data/tensors/ab/abc.safetensors", dtype="F32", shape=[1, 4, 64, 64], digest="ab" * 32,
        nbytes=2**40 + 3)),
    common_pb2.Value(type="CONDITIONING", tensor=common_pb2.TensorRef(uri="s3://b/k", dtype="F16", digest="00")),
    common_pb2.Value(type="MODEL", json='{"ckpt": "sd15.safetensors"}'),
    common_pb2.Value(type="INT", json=""),
    common_pb2.Value(type="INT"),
]


@pytest.mark.parametrize("value", VALUES)
def test_round_trip_and_agreement_with_json_format(value: common_pb2.Value) -> None:
    assert value_from_dict(value_to_dict(value)) == value
    # entries written by json_format (earlier versions) read back the same
    written = json_format.MessageToDict(value, preserving_proto_field_name=True)
    assert value_from_dict(written) == value
    assert json_format.ParseDict(value_to_dict(value), common_pb2.Value()) == value
