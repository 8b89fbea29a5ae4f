"""Our parallel PNG encoder against Pillow's decoder and encoder."""

from __future__ import annotations

import io
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from comfymesh.outputs import encode_png, png_metadata

PHOTO = Path(__file__).parents[1] / "shared" / "data" / "astronaut.png"


def _photo(size: int = 512) -> np.ndarray:
    return np.asarray(Image.open(PHOTO).convert("RGB").resize((size, size)))


@pytest.mark.parametrize("level", [0, 1, 4, 9])
@pytest.mark.parametrize("shape", [(1, 1, 3), (3, 700, 4), (600, 333, 3), (257, 129), (64, 48, 2), (513, 200, 1)])
def test_round_trip_is_lossless(shape: tuple[int, ...], level: int) -> None:
    rng = np.random.default_rng(sum(shape) + level)
    # half smooth gradient, half noise: every filter type gets chosen somewhere
    pixels = rng.integers(0, 256, shape, dtype=np.uint8)
    pixels[: shape[0] // 2] = (np.arange(shape[1], dtype=np.uint16)[None, :] * 3 % 256).astype(np.uint8).reshape(
        (1, shape[1]) + (1,) * (len(shape) - 2))
    decoded = np.asarray(Image.open(io.BytesIO(encode_png(pixels, compress_level=level))))
    assert decoded.shape == (shape if len(shape) == 2 or shape[2] != 1 else shape[:2])
    assert np.array_equal(decoded.reshape(pixels.shape), pixels)


def test_photo_compresses_close_to_pillow_and_stream_is_valid() -> None:
    photo = _photo()
    ours = encode_png(photo, compress_level=4)
    pillow = io.BytesIO()
    Image.fromarray(photo).save(pillow, format="PNG", compress_level=4)
    assert len(ours) < 1.12 * len(pillow.getvalue())  # Up filter only: a little larger than Pillow's
    assert len(ours) < 0.7 * photo.nbytes
    assert len(encode_png(photo, compress_level=0)) > photo.nbytes  # level 0 stores the rows unfiltered
    # one zlib stream across all bands: a strict decoder (checksum included) accepts it
    idat = ours[ours.index(b"IDAT") + 4:ours.index(b"IEND") - 8]
    raw = zlib.decompress(idat)
    assert len(raw) == photo.shape[0] * (1 + photo.shape[1] * 3)
    assert set(raw[:: 1 + photo.shape[1] * 3]) == {2}  # the Up filter on every row


def test_metadata_chunks_read_back() -> None:
    data = encode_png(_photo(64), compress_level=1, metadata=png_metadata({"3": {"seed": 1}}, {"workflow": {"é": 1}}))
    image = Image.open(io.BytesIO(data))
    assert image.text == {"prompt": '{"3": {"seed": 1}}', "workflow": '{"\\u00e9": 1}'}


def test_unsupported_frames_are_refused() -> None:
    with pytest.raises(ValueError):
        encode_png(np.zeros((4, 4, 5), np.uint8), compress_level=1)
    with pytest.raises(ValueError):
        encode_png(np.zeros((0, 4, 3), np.uint8), compress_level=1)


def test_bytes_do_not_depend_on_the_core_count(monkeypatch: pytest.MonkeyPatch) -> None:
    import comfymesh.outputs._png as png

    photo = _photo(300)
    encoded = []
    for cores in (1, 3, 16):
        monkeypatch.setattr(png.os, "cpu_count", lambda cores=cores: cores)
        monkeypatch.setattr(png, "_pool", None)  # a pool sized for this core count
        encoded.append(encode_png(photo, compress_level=4))
    assert encoded[0] == encoded[1] == encoded[2]
