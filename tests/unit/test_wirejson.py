"""wirejson: orjson's speed, the standard library's range of values."""

from __future__ import annotations

import json

import pytest

from comfymesh.contracts import wirejson


def test_round_trips_like_the_standard_library() -> None:
    prompt = {"3": {"class_type": "KSampler", "inputs": {"seed": 2**64 - 1, "cfg": 7.5, "model": ["4", 0],
                                                         "text": "café \u2603 \"quoted\"", "flag": True, "none": None}}}
    text = wirejson.dumps(prompt)
    assert json.loads(text) == prompt
    assert text != json.dumps(prompt)  # compact orjson text, not the standard library's


def test_values_orjson_refuses_fall_back() -> None:
    huge = {"seed": 2**70}  # beyond 64 bits: validation rejects it later, with ComfyUI's error
    assert json.loads(wirejson.dumps(huge)) == huge
    assert wirejson.dumps({1: "a"}) == json.dumps({1: "a"})  # non-string keys


def test_reads_what_the_standard_library_reads() -> None:
    assert wirejson.loads('{"a": [1, 2.5, "x"]}') == {"a": [1, 2.5, "x"]}
    assert wirejson.loads(b'{"seed": 1180591620717411303424}') == {"seed": 2**70}
    nan = wirejson.loads('{"cfg": NaN}')["cfg"]
    assert nan != nan  # orjson refuses the NaN literal; the standard library reads it
    with pytest.raises(json.JSONDecodeError):
        wirejson.loads("{not json")
