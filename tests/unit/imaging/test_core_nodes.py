"""Core primitive, string, mask and image nodes of the imaging stage: declarations against ComfyUI 0.8.0's,
numbers against ComfyUI's formulas (written out here on small arrays), the per-node size limits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from comfymesh.catalog.schema import SOURCE_KEY
from comfymesh.contracts.errors import NodeInputError
from comfymesh.graph.limits import OutputLimits
from comfymesh.imaging.nodes import nodes
from comfymesh.stage.node import NodeContext

GOLDEN = Path(__file__).parents[2] / "golden" / "imaging_core_object_info.json"
TOLERANCE = 1 / 255


@pytest.fixture
def ctx(tmp_path: Path) -> NodeContext:
    (tmp_path / "input").mkdir()
    return NodeContext(job_id="job", node_id="7", class_type="Test", home=tmp_path)


def run(ctx: NodeContext, name: str, **inputs: Any) -> tuple[Any, ...]:
    return nodes.impls[name](ctx, **inputs)


def test_object_info_equals_comfyui_080() -> None:
    golden = json.loads(GOLDEN.read_text())
    golden.pop("_about")
    served = {name: nodes.schemas[name].object_info() for name in golden}
    # the image list is read from the input folder when /object_info is asked
    assert served["LoadImageMask"]["input"]["required"]["image"][0] == [{SOURCE_KEY: "input/images"}]
    served["LoadImageMask"]["input"]["required"]["image"][0] = []
    assert served == golden


def test_primitives_pass_their_value_and_strings_follow_python(ctx: NodeContext) -> None:
    assert run(ctx, "PrimitiveInt", value=-7) == (-7,)
    assert run(ctx, "PrimitiveFloat", value=2.5) == (2.5,)
    assert run(ctx, "PrimitiveBoolean", value=True) == (True,)
    assert run(ctx, "PrimitiveString", value="a cat") == ("a cat",)
    assert run(ctx, "PrimitiveStringMultiline", value="a\nb") == ("a\nb",)
    assert run(ctx, "StringConcatenate", string_a="a", string_b="b", delimiter=", ") == ("a, b",)
    assert run(ctx, "StringReplace", string="a cat, a hat", find="a ", replace="the ") == ("the cat, the hat",)


def test_mask_basics(ctx: NodeContext) -> None:
    (solid,) = run(ctx, "SolidMask", value=0.25, width=3, height=2)
    assert solid.shape == (1, 2, 3) and solid.dtype == np.float32 and (solid == 0.25).all()
    (inverted,) = run(ctx, "InvertMask", mask=solid)
    assert (inverted == 0.75).all()
    (image,) = run(ctx, "MaskToImage", mask=solid[0])  # an [H,W] mask is one mask
    assert image.shape == (1, 2, 3, 3) and (image == 0.25).all()
    rgba = np.random.default_rng(0).random((2, 2, 3, 4), dtype=np.float32)
    for index, channel in enumerate(("red", "green", "blue", "alpha")):
        (mask,) = run(ctx, "ImageToMask", image=rgba, channel=channel)
        assert np.array_equal(mask, rgba[..., index])
    with pytest.raises(NodeInputError, match="no alpha channel"):
        run(ctx, "ImageToMask", image=rgba[..., :3], channel="alpha")
    (thresholded,) = run(ctx, "ThresholdMask", mask=np.array([[[0.2, 0.5, 0.51]]]), value=0.5)
    assert thresholded.tolist() == [[[0.0, 0.0, 1.0]]]


def test_grow_mask_dilates_and_erodes_with_comfyui_footprints(ctx: NodeContext) -> None:
    dot = np.zeros((1, 5, 5), np.float32)
    dot[0, 2, 2] = 1.0
    (cross,) = run(ctx, "GrowMask", mask=dot, expand=1, tapered_corners=True)
    expected = np.zeros((5, 5))
    expected[1:4, 2] = expected[2, 1:4] = 1
    assert np.array_equal(cross[0], expected)
    (square,) = run(ctx, "GrowMask", mask=dot, expand=1, tapered_corners=False)
    assert square[0, 1:4, 1:4].all() and square.sum() == 9
    (diamond,) = run(ctx, "GrowMask", mask=dot, expand=2, tapered_corners=True)
    assert diamond.sum() == 13  # |dx| + |dy| <= 2
    (shrunk,) = run(ctx, "GrowMask", mask=square, expand=-1, tapered_corners=False)
    assert np.array_equal(shrunk, dot)


def test_feather_mask_follows_comfyui_ramps_including_its_index_minus_zero(ctx: NodeContext) -> None:
    ones = np.ones((1, 4, 6), np.float32)
    (feathered,) = run(ctx, "FeatherMask", mask=ones, left=2, top=0, right=3, bottom=1)
    # ComfyUI: column x < left times (x+1)/left; column -x for x < right times (x+1)/right, and -0 is column 0;
    # row -y for y < bottom times (y+1)/bottom
    columns = np.ones(6)
    columns[0] *= 1 / 2
    columns[1] *= 2 / 2
    columns[0] *= 1 / 3
    columns[-1] *= 2 / 3
    columns[-2] *= 3 / 3
    rows = np.ones(4)
    rows[0] *= 1 / 1
    np.testing.assert_allclose(feathered[0], rows[:, None] * columns[None, :], atol=1e-6)


@pytest.mark.parametrize(("operation", "expected"), [
    ("multiply", [[0.5, 0.2], [0.8, 0.0]]), ("add", [[1.0, 0.9], [1.0, 1.0]]),
    ("subtract", [[0.0, 0.0], [0.0, 1.0]]),
    # the logic operations round first, half to even as torch does: 0.5 is 0
    ("and", [[0.0, 0.0], [1.0, 0.0]]), ("or", [[1.0, 0.0], [1.0, 1.0]]), ("xor", [[1.0, 0.0], [0.0, 1.0]]),
])
def test_mask_composite_operations_at_an_offset(ctx: NodeContext, operation: str, expected: list[Any]) -> None:
    destination = np.array([[[0.9, 0.9, 0.9], [0.9, 0.5, 0.4], [0.9, 0.8, 1.0]]], np.float32)
    source = np.array([[[1.0, 0.5, 7.0], [1.0, 0.0, 7.0], [7.0, 7.0, 7.0]]], np.float32)
    (out,) = run(ctx, "MaskComposite", destination=destination, source=source, x=1, y=1, operation=operation)
    assert out.shape == (1, 3, 3)
    np.testing.assert_allclose(out[0, 1:, 1:], expected, atol=1e-6)
    np.testing.assert_array_equal(out[0, 0], destination[0, 0])  # outside the source untouched
    np.testing.assert_array_equal(out[0, 1:, 0], destination[0, 1:, 0])


def test_load_image_mask_reads_one_channel_and_inverts_alpha(ctx: NodeContext) -> None:
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[..., 1] = 51
    rgba[..., 3] = [[0, 128, 255], [255, 255, 255]]
    Image.fromarray(rgba, "RGBA").save(ctx.home / "input" / "m.png")
    (alpha,) = run(ctx, "LoadImageMask", image="m.png", channel="alpha")
    np.testing.assert_allclose(alpha, 1 - rgba[None, ..., 3] / 255, atol=TOLERANCE)
    (green,) = run(ctx, "LoadImageMask", image="m.png", channel="green")
    assert green.shape == (1, 2, 3)
    np.testing.assert_allclose(green, 0.2, atol=TOLERANCE)
    Image.fromarray(rgba[..., :3], "RGB").save(ctx.home / "input" / "rgb.png")
    (opaque,) = run(ctx, "LoadImageMask", image="rgb.png", channel="alpha")
    assert opaque.shape == (1, 2, 3) and not opaque.any()


def test_mask_preview_saves_a_grey_png_in_temp(ctx: NodeContext) -> None:
    mask = np.array([[[0.0, 1.0], [0.5, 1.0]]], np.float32)
    run(ctx, "MaskPreview", mask=mask)
    assert ctx.ui is not None
    (entry,) = ctx.ui["images"]
    assert entry["type"] == "temp" and entry["filename"].startswith("ComfyUI_temp_")
    pixels = np.asarray(Image.open(ctx.home / "temp" / entry["subfolder"] / entry["filename"]).convert("RGB"))
    assert pixels[..., 0].tolist() == [[0, 255], [127, 255]] and (pixels[..., 0] == pixels[..., 2]).all()


def test_image_composite_masked_blends_by_the_mask_at_an_offset(ctx: NodeContext) -> None:
    destination = np.zeros((2, 4, 5, 3), np.float32)
    source = np.ones((1, 2, 2, 3), np.float32)
    mask = np.array([[1.0, 0.5], [0.0, 1.0]], np.float32)
    (out,) = run(ctx, "ImageCompositeMasked", destination=destination, source=source, x=4, y=1,
                 resize_source=False, mask=mask)
    assert out.shape == (2, 4, 5, 3)
    # the source is cut at the right edge: only its first column lands, in column 4
    np.testing.assert_allclose(out[:, 1:3, 4, 0], [[1.0, 0.0], [1.0, 0.0]], atol=TOLERANCE)
    assert out[:, :, :4].sum() == 0 and out[:, 0].sum() == 0 and out[:, 3].sum() == 0
    (whole,) = run(ctx, "ImageCompositeMasked", destination=destination[:, :, :, :], source=source * 0.5,
                   x=0, y=0, resize_source=True)
    np.testing.assert_allclose(whole, 0.5, atol=TOLERANCE)  # resized to the destination, no mask: replaced
    rgba = np.zeros((1, 2, 2, 4), np.float32)
    (with_alpha,) = run(ctx, "ImageCompositeMasked", destination=rgba, source=source, x=0, y=0,
                        resize_source=False)
    assert with_alpha.shape == (1, 2, 2, 4) and (with_alpha == 1).all()  # the source gets an opaque alpha


def test_image_pad_for_outpaint_pads_grey_and_feathers_the_mask(ctx: NodeContext) -> None:
    image = np.ones((1, 8, 10, 3), np.float32)
    padded, mask = run(ctx, "ImagePadForOutpaint", image=image, left=2, top=0, right=0, bottom=1, feathering=3)
    assert padded.shape == (1, 9, 12, 3) and mask.shape == (1, 9, 12)
    assert (padded[0, :8, :2] == 0.5).all() and (padded[0, 8] == 0.5).all() and (padded[0, :8, 2:] == 1).all()
    assert (mask[0, :, :2] == 1).all() and (mask[0, 8] == 1).all()
    # ComfyUI: d = min(distance to each padded side; unpadded sides count as H or W), ((f - d) / f)² for d < f
    expected = np.zeros((8, 10))
    for i in range(8):
        for j in range(10):
            d = min(8, 8 - i, j, 10)
            if d < 3:
                expected[i, j] = ((3 - d) / 3) ** 2
    np.testing.assert_allclose(mask[0, :8, 2:], expected, atol=1e-6)
    _, unfeathered = run(ctx, "ImagePadForOutpaint", image=image, left=8, top=0, right=0, bottom=0, feathering=4)
    assert not unfeathered[0, :, 8:].any()  # 2·feathering is not below the height: no feathering


def test_batch_nodes(ctx: NodeContext) -> None:
    batch = np.arange(4, dtype=np.float32).reshape(4, 1, 1, 1) * np.ones((1, 2, 2, 3), np.float32)
    (picked,) = run(ctx, "ImageFromBatch", image=batch, batch_index=2, length=5)
    assert picked[:, 0, 0, 0].tolist() == [2.0, 3.0]
    (last,) = run(ctx, "ImageFromBatch", image=batch, batch_index=9, length=1)
    assert last[:, 0, 0, 0].tolist() == [3.0]
    (repeated,) = run(ctx, "RepeatImageBatch", image=batch[:2], amount=3)
    assert repeated[:, 0, 0, 0].tolist() == [0.0, 1.0, 0.0, 1.0, 0.0, 1.0]


def test_scale_to_max_dimension_keeps_the_aspect(ctx: NodeContext) -> None:
    image = np.random.default_rng(1).random((1, 6, 9, 3), dtype=np.float32)
    (wide,) = run(ctx, "ImageScaleToMaxDimension", image=image, upscale_method="nearest-exact", largest_size=18)
    assert wide.shape == (1, 12, 18, 3)
    np.testing.assert_allclose(wide[0, ::2, ::2], image[0], atol=TOLERANCE)
    (tall,) = run(ctx, "ImageScaleToMaxDimension", image=image.transpose(0, 2, 1, 3), upscale_method="area",
                  largest_size=4)
    assert tall.shape == (1, 4, round(6 / 9 * 4), 3)


def test_nodes_that_make_bigger_outputs_check_the_limits(ctx: NodeContext) -> None:
    ctx.limits = OutputLimits(max_pixels=100, max_batch=4)
    image = np.zeros((2, 5, 5, 3), np.float32)
    with pytest.raises(NodeInputError, match="bigger than max"):
        run(ctx, "SolidMask", value=1.0, width=20, height=20)
    with pytest.raises(NodeInputError, match="bigger than max"):
        run(ctx, "RepeatImageBatch", image=image, amount=3)
    with pytest.raises(NodeInputError, match="bigger than max"):
        run(ctx, "ImagePadForOutpaint", image=image, left=8, top=8, right=0, bottom=0, feathering=0)
    with pytest.raises(NodeInputError, match="bigger than max"):
        run(ctx, "ImageScaleToMaxDimension", image=image, upscale_method="area", largest_size=64)
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(ctx.home / "input" / "big.png")
    with pytest.raises(NodeInputError, match="bigger than max"):
        run(ctx, "LoadImageMask", image="big.png", channel="red")
