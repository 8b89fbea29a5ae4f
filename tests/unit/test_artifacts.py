"""The artifact store: content-addressed bundles on local disk and in memory; codec round trips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from comfymesh.artifacts import ArtifactStore, decode_value, encode_value


@pytest.fixture(params=["file", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    url = (tmp_path / "artifacts").as_uri() if request.param == "file" else f"memory://test-{tmp_path.name}"
    return ArtifactStore(url)


def test_same_content_is_stored_once(store: ArtifactStore) -> None:
    image = np.random.default_rng(0).random((1, 16, 16, 3), dtype=np.float32)
    first = encode_value("IMAGE", image, store)
    second = encode_value("IMAGE", image.copy(), store)
    assert first.tensor.uri == second.tensor.uri and first.tensor.digest == second.tensor.digest
    assert list(first.tensor.shape) == [1, 16, 16, 3] and first.tensor.dtype == "F32"
    assert np.array_equal(decode_value(first, store), image)


def test_latent_and_conditioning_round_trip(store: ArtifactStore) -> None:
    latent = {"samples": np.ones((2, 4, 8, 8), np.float32), "batch_index": [3, 4],
              "noise_mask": np.zeros((1, 8, 8), np.float32)}
    back = decode_value(encode_value("LATENT", latent, store), store)
    assert back["batch_index"] == [3, 4] and back["samples"].shape == (2, 4, 8, 8) and "noise_mask" in back
    cond = [[np.ones((1, 77, 8), np.float32), {"pooled_output": np.zeros((1, 4), np.float32), "width": 512}],
            [np.zeros((1, 154, 8), np.float32), {}]]
    back_cond = decode_value(encode_value("CONDITIONING", cond, store), store)
    assert back_cond[0][1]["width"] == 512 and back_cond[0][1]["pooled_output"].shape == (1, 4)
    assert back_cond[1][0].shape == (1, 154, 8) and back_cond[1][1] == {}


def test_conditioning_lists_of_arrays_round_trip(store: ArtifactStore) -> None:
    # ReferenceLatent appends latents to a list in the entry's extras; their order and shapes survive
    refs = [np.full((1, 16, 4, 6), 1.0, np.float32), np.full((1, 16, 8, 8), 2.0, np.float32)]
    cond = [[np.ones((1, 9, 8), np.float32), {"reference_latents": refs, "reference_latents_method": "index",
                                              "guidance": None, "tags": [1, 2]}]]
    back, = decode_value(encode_value("CONDITIONING", cond, store), store)
    assert [r.shape for r in back[1]["reference_latents"]] == [(1, 16, 4, 6), (1, 16, 8, 8)]
    assert [float(r.mean()) for r in back[1]["reference_latents"]] == [1.0, 2.0]
    assert {k: v for k, v in back[1].items() if k != "reference_latents"} == {
        "reference_latents_method": "index", "guidance": None, "tags": [1, 2]}


def test_small_values_travel_as_json(store: ArtifactStore) -> None:
    handle = {"kind": "model", "ckpt": "a.safetensors", "digest": "abc"}
    value = encode_value("MODEL", handle, store)
    assert value.WhichOneof("payload") == "json" and decode_value(value, store) == handle


def test_a_damaged_file_is_refused(tmp_path: Path) -> None:
    store = ArtifactStore((tmp_path / "a").as_uri())
    value = encode_value("IMAGE", np.ones((1, 4, 4, 3), np.float32), store)
    path = Path(value.tensor.uri.removeprefix("file://"))
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    # another process (a fresh store) reads the file and refuses it
    with pytest.raises(OSError, match="digest"):
        decode_value(value, ArtifactStore((tmp_path / "a").as_uri()))
    # the writer still holds the verified bytes in memory: its nodes get the right values, not the damage
    assert np.array_equal(decode_value(value, store), np.ones((1, 4, 4, 3), np.float32))


def test_memory_copies_are_bounded_and_not_shared(tmp_path: Path) -> None:
    store = ArtifactStore((tmp_path / "a").as_uri(), memory_bytes=64 * 1024)
    values = [encode_value("IMAGE", np.full((1, 32, 32, 3), i, np.float32), store) for i in range(8)]
    assert store._recent_bytes <= 64 * 1024 and len(store._recent) < 8  # oldest forgotten
    first = decode_value(values[-1], store)
    first[...] = -1  # a node scribbling on its input never changes what the next reader gets
    assert np.array_equal(decode_value(values[-1], store), np.full((1, 32, 32, 3), 7, np.float32))
