"""The imaging stage's utility nodes (image size, stitch, Canny, blend, alpha, strings, PreviewAny): declarations
against the golden table, numbers against ComfyUI's formulas written out here, Canny against kornia's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from comfymesh.contracts.errors import NodeInputError
from comfymesh.imaging.nodes import nodes
from comfymesh.stage.node import NodeContext
from tests.mesh import SHARED

GOLDEN = Path(__file__).parents[2] / "golden" / "imaging_utility_object_info.json"
PHOTOS = SHARED / "data"
TOLERANCE = 1 / 255


@pytest.fixture
def ctx(tmp_path: Path) -> NodeContext:
    return NodeContext(job_id="job", node_id="7", class_type="Test", home=tmp_path)


def run(ctx: NodeContext, name: str, **inputs: Any) -> tuple[Any, ...]:
    return nodes.impls[name](ctx, **inputs)


def photo(name: str) -> np.ndarray:
    return np.asarray(Image.open(PHOTOS / name).convert("RGB"), np.float32)[None] / 255


def test_object_info_equals_the_golden_table() -> None:
    golden = json.loads(GOLDEN.read_text())
    golden.pop("_about")
    assert {name: nodes.schemas[name].object_info() for name in golden} == golden


def test_get_image_size_and_scale_to_total_pixels(ctx: NodeContext) -> None:
    images = np.full((2, 50, 100, 3), 0.25, np.float32)
    assert run(ctx, "GetImageSize", image=images) == (100, 50, 2)
    # sqrt(0.01·1024² / 5000) = 1.4482: 144.8 -> 144 in steps of 8, 72.4 -> 72
    (scaled,) = run(ctx, "ImageScaleToTotalPixels", image=images, upscale_method="bilinear", megapixels=0.01,
                    resolution_steps=8)
    assert scaled.shape == (2, 72, 144, 3) and np.abs(scaled - 0.25).max() <= TOLERANCE
    (unit,) = run(ctx, "ImageScaleToTotalPixels", image=images, upscale_method="area", megapixels=0.01,
                  resolution_steps=1)
    assert unit.shape[1:3] == (72, 145)  # 144.82 -> 145, 72.41 -> 72
    with pytest.raises(NodeInputError, match="resolution_steps"):
        run(ctx, "ImageScaleToTotalPixels", image=images, upscale_method="area", megapixels=0.01,
            resolution_steps=256)


def test_image_stitch_pads_spaces_and_orders_as_comfyui(ctx: NodeContext) -> None:
    left = np.full((1, 4, 3, 3), 0.2, np.float32)
    right = np.full((2, 2, 5, 3), 0.8, np.float32)
    (out,) = run(ctx, "ImageStitch", image1=left, direction="right", match_image_size=False, spacing_width=1,
                 spacing_color="red", image2=right)
    assert out.shape == (2, 4, 3 + 2 + 5, 3)  # spacing 1 -> 2 (even), batch 1 -> 2 by repeating the last image
    assert (out[:, :, :3] == 0.2).all()
    assert (out[:, :, 3:5] == [1.0, 0.0, 0.0]).all()  # red spacer
    assert (out[:, 1:3, 5:] == 0.8).all() and (out[:, [0, 3], 5:] == 0.0).all()  # centred, padded 0 for a colour
    (up,) = run(ctx, "ImageStitch", image1=left, direction="up", match_image_size=False, spacing_width=0,
                spacing_color="white", image2=right[:1])
    assert up.shape == (1, 6, 5, 3)
    assert (up[0, :2] == 0.8).all() and (up[0, 2:, 1:4] == 0.2).all() and (up[0, 2:, [0, 4]] == 1.0).all()
    (matched,) = run(ctx, "ImageStitch", image1=left, direction="down", match_image_size=True, spacing_width=0,
                     spacing_color="white", image2=right[:1])
    assert matched.shape == (1, 4 + int(3 / 2.5), 3, 3)  # image2 scaled to image1's width, int() of the height
    assert np.abs(matched[0, 4:] - 0.8).max() <= TOLERANCE
    (alone,) = run(ctx, "ImageStitch", image1=left, direction="right", match_image_size=True, spacing_width=0,
                   spacing_color="white")
    assert np.array_equal(alone, left)


def test_image_stitch_gives_an_opaque_alpha_to_an_rgb_image(ctx: NodeContext) -> None:
    rgba = np.full((1, 2, 2, 4), 0.5, np.float32)
    (out,) = run(ctx, "ImageStitch", image1=np.zeros((1, 2, 2, 3), np.float32), direction="right",
                 match_image_size=False, spacing_width=2, spacing_color="white", image2=rgba)
    assert out.shape == (1, 2, 6, 4)
    assert (out[0, :, :2, 3] == 1.0).all() and (out[0, :, 2:4] == 1.0).all() and (out[0, :, 4:] == 0.5).all()


def _blend_formula(a: np.ndarray, b: np.ndarray, mode: str) -> np.ndarray:
    if mode == "normal":
        return b
    if mode == "multiply":
        return a * b
    if mode == "screen":
        return 1 - (1 - a) * (1 - b)
    if mode == "overlay":
        return np.where(a <= 0.5, 2 * a * b, 1 - 2 * (1 - a) * (1 - b))
    if mode == "soft_light":
        g = np.where(a <= 0.25, ((16 * a - 12) * a + 4) * a, np.sqrt(a))
        return np.where(b <= 0.5, a - (1 - 2 * b) * a * (1 - a), a + (2 * b - 1) * (g - a))
    return a - b


@pytest.mark.parametrize("mode", ["normal", "multiply", "screen", "overlay", "soft_light", "difference"])
def test_image_blend_modes(ctx: NodeContext, mode: str) -> None:
    rng = np.random.default_rng(3)
    a, b = rng.random((2, 1, 4, 5, 3), dtype=np.float32)
    (out,) = run(ctx, "ImageBlend", image1=a, image2=b, blend_factor=0.3, blend_mode=mode)
    expected = np.clip(a * 0.7 + _blend_formula(a, b, mode) * 0.3, 0, 1)
    assert np.abs(out - expected).max() <= 1e-6


def test_image_blend_scales_image2_to_image1(ctx: NodeContext) -> None:
    (out,) = run(ctx, "ImageBlend", image1=np.zeros((1, 8, 8, 3), np.float32),
                 image2=np.ones((1, 4, 4, 3), np.float32), blend_factor=0.5, blend_mode="normal")
    assert out.shape == (1, 8, 8, 3) and np.abs(out - 0.5).max() <= TOLERANCE


def test_join_and_split_image_with_alpha(ctx: NodeContext) -> None:
    images = np.random.default_rng(1).random((3, 4, 4, 3), dtype=np.float32)
    mask = np.zeros((2, 2, 2), np.float32)
    mask[:, :, 1] = 1.0
    (rgba,) = run(ctx, "JoinImageWithAlpha", image=images, alpha=mask)
    assert rgba.shape == (2, 4, 4, 4)  # the smaller batch
    assert np.array_equal(rgba[..., :3], images[:2])
    # bilinear 2 -> 4 (align_corners False): columns at 0, 0.25, 0.75, 1 of the way, then 1 - mask
    assert np.abs(rgba[0, 0, :, 3] - [1.0, 0.75, 0.25, 0.0]).max() <= TOLERANCE
    rgb, back = run(ctx, "SplitImageWithAlpha", image=rgba)
    assert np.array_equal(rgb, images[:2]) and np.abs(back - (1 - rgba[..., 3])).max() == 0
    _, opaque = run(ctx, "SplitImageWithAlpha", image=images)
    assert (opaque == 0).all()


def test_canny_finds_a_step_edge_once(ctx: NodeContext) -> None:
    step = np.zeros((1, 12, 12, 3), np.float32)
    step[:, :, 6:] = 1.0
    (edges,) = run(ctx, "Canny", image=step, low_threshold=0.4, high_threshold=0.8)
    assert edges.shape == (1, 12, 12, 3) and set(np.unique(edges)) == {0.0, 1.0}
    columns = np.flatnonzero(edges[0, 6, :, 0])
    # the two middle columns tie; the left one is kept, as kornia and OpenCV keep it
    assert columns.tolist() == [5]
    with pytest.raises(NodeInputError, match="RGB"):
        run(ctx, "Canny", image=np.zeros((1, 4, 4, 4), np.float32), low_threshold=0.4, high_threshold=0.8)


@pytest.mark.parametrize("name", ["astronaut.png", "coffee.png"])
@pytest.mark.parametrize("thresholds", [(0.4, 0.8), (0.1, 0.2)])
def test_canny_equals_kornia_on_photos(ctx: NodeContext, name: str, thresholds: tuple[float, float]) -> None:
    torch = pytest.importorskip("torch")
    kornia = pytest.importorskip("kornia")
    image = photo(name)
    expected = kornia.filters.canny(torch.from_numpy(image).movedim(-1, 1), *thresholds)[1][:, 0].numpy()
    (edges,) = run(ctx, "Canny", image=image, low_threshold=thresholds[0], high_threshold=thresholds[1])
    assert expected.sum() > 1000
    assert np.abs(edges[..., 0] - expected).max() <= TOLERANCE


def test_string_nodes_follow_python(ctx: NodeContext) -> None:
    assert run(ctx, "StringSubstring", string="a cat", start=2, end=-1) == ("ca",)
    assert run(ctx, "StringLength", string="héllo") == (5,)
    assert run(ctx, "CaseConverter", string="a cAt", mode="Title Case") == ("A Cat",)
    assert run(ctx, "StringTrim", string="  a  ", mode="Left") == ("a  ",)
    assert run(ctx, "StringContains", string="A Cat", substring="cat", case_sensitive=False) == (True,)
    assert run(ctx, "StringCompare", string_a="Cat", string_b="cat", mode="Equal", case_sensitive=True) == (False,)
    assert run(ctx, "RegexMatch", string="a1", regex_pattern="[", case_insensitive=True, multiline=False,
               dotall=False) == (False,)


def test_regex_extract_modes(ctx: NodeContext) -> None:
    text = "w=512, h=768\nW=64"
    common = {"string": text, "case_insensitive": True, "multiline": False, "dotall": False}
    assert run(ctx, "RegexExtract", regex_pattern=r"(\w)=(\d+)", mode="First Match", group_index=1,
               **common) == ("w=512",)
    assert run(ctx, "RegexExtract", regex_pattern=r"(\w)=(\d+)", mode="All Matches", group_index=1,
               **common) == ("w\nh\nW",)  # a pattern with groups: each match's first group, as ComfyUI
    assert run(ctx, "RegexExtract", regex_pattern=r"(\w)=(\d+)", mode="First Group", group_index=2,
               **common) == ("512",)
    assert run(ctx, "RegexExtract", regex_pattern=r"(\w)=(\d+)", mode="All Groups", group_index=2,
               **{**common, "case_insensitive": False}) == ("512\n768\n64",)
    assert run(ctx, "RegexExtract", regex_pattern=r"(\w)=(\d+)", mode="First Group", group_index=3,
               **common) == ("",)


def test_regex_replace(ctx: NodeContext) -> None:
    assert run(ctx, "RegexReplace", string="A cat, a hat", regex_pattern=r"\ba\b", replace="the") == (
        "the cat, the hat",)
    assert run(ctx, "RegexReplace", string="A cat, a hat", regex_pattern=r"\ba\b", replace="the",
               case_insensitive=False, count=1) == ("A cat, the hat",)
    with pytest.raises(NodeInputError, match="regex_pattern"):
        run(ctx, "RegexReplace", string="x", regex_pattern="(", replace="")


def test_preview_any_shows_the_value_as_text(ctx: NodeContext) -> None:
    # no outputs in ComfyUI 0.8.0: the text reaches the UI only
    for source, text in (("a cat", "a cat"), (1.5, "1.5"), ({"a": [1, 2]}, json.dumps({"a": [1, 2]}, indent=4)),
                         (None, "None")):
        assert run(ctx, "PreviewAny", source=source) == ()
        assert ctx.ui == {"text": [text]}
