"""Imaging nodes against the ImageMagick command line on a real photo, and ImageSharpen against its formula.

The reference is /usr/bin/convert (the real ImageMagick CLI; a PATH `convert` may be a stand-in),
asked for 16-bit PPM output so the comparison is not limited by 8-bit rounding.
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from wand.color import Color
from wand.image import Image as WandImage

from comfymesh.contracts.errors import NodeInputError
from comfymesh.graph.limits import OutputLimits
from comfymesh.imaging import ops
from comfymesh.imaging.nodes import nodes
from comfymesh.stage.node import NodeContext

CONVERT = "/usr/bin/convert"
SHARED = Path(__file__).resolve().parents[2] / "shared"
PHOTO = SHARED / "data" / "astronaut.png"
TOLERANCE = 1 / 255


@pytest.fixture(scope="module")
def convert() -> str:
    try:
        version = subprocess.run([CONVERT, "-version"], capture_output=True, text=True, check=False).stdout
    except FileNotFoundError:
        version = ""
    if "ImageMagick" not in version:
        pytest.fail(f"{CONVERT} is not ImageMagick ({version.splitlines()[:1]}): apt-get install imagemagick")
    return CONVERT


@pytest.fixture(scope="module")
def photo() -> Path:
    assert PHOTO.is_file(), f"reference photo missing: {PHOTO}"
    return PHOTO


@pytest.fixture
def ctx(tmp_path: Path, photo: Path) -> NodeContext:
    (tmp_path / "input" / "sub").mkdir(parents=True)
    shutil.copy(photo, tmp_path / "input" / "astronaut.png")
    return NodeContext(job_id="job", node_id="5", class_type="Test", home=tmp_path)


@pytest.fixture
def astronaut(ctx: NodeContext) -> np.ndarray:
    image, _ = nodes.impls["LoadImage"](ctx, image="astronaut.png")
    return image


def magick(convert: str, source: Path, *operations: str) -> np.ndarray:
    """What `convert source operations` gives, as float32 [1,H,W,3]."""
    out = subprocess.run([convert, str(source), *operations, "-depth", "16", "ppm:-"],
                         capture_output=True, check=True).stdout
    # ImageMagick copies the source's comment into the header as "#..." lines.
    header = re.match(rb"P6(?:\s+|#[^\n]*\n)+(\d+)\s+(\d+)\s+65535\s", out)
    assert header, out[:80]
    width, height = int(header[1]), int(header[2])
    pixels = np.frombuffer(out[header.end():], dtype=">u2").reshape(height, width, 3)
    return (pixels / 65535.0).astype(np.float32)[None]


def assert_close(ours: np.ndarray, reference: np.ndarray, tolerance: float = TOLERANCE) -> None:
    assert ours.shape == reference.shape
    assert np.abs(ours - reference).max() <= tolerance


def test_float_round_trip_through_wand() -> None:
    frame = np.random.default_rng(0).random((7, 5, 3), dtype=np.float32)
    with ops.to_wand(frame) as image:
        assert np.abs(ops.from_wand(image) - frame).max() < 1e-5


def test_load_image_matches_imagemagick(ctx: NodeContext, convert: str, photo: Path) -> None:
    image, mask = nodes.impls["LoadImage"](ctx, image="astronaut.png")
    assert image.dtype == np.float32 and mask.shape == (1, 64, 64) and not mask.any()
    assert_close(image, magick(convert, photo), 1e-6)


SCALES = [("nearest-exact", ["-filter", "Point"]), ("bilinear", ["-filter", "Triangle"]),
          ("area", ["-filter", "Box"]), ("lanczos", ["-filter", "Lanczos"]),
          ("bicubic", ["-filter", "Cubic", "-define", "filter:b=0", "-define", "filter:c=0.75"])]


@pytest.mark.parametrize(("method", "filter_args"), SCALES)
def test_image_scale_matches_imagemagick(astronaut: np.ndarray, ctx: NodeContext, convert: str,
                                         photo: Path, method: str, filter_args: list[str]) -> None:
    (down,) = nodes.impls["ImageScale"](ctx, image=astronaut, upscale_method=method, width=200, height=150,
                                  crop="disabled")
    assert_close(down, magick(convert, photo, *filter_args, "-resize", "200x150!"))
    (up,) = nodes.impls["ImageScaleBy"](ctx, image=astronaut, upscale_method=method, scale_by=1.3)
    assert_close(up, magick(convert, photo, *filter_args, "-resize", "666x666!"))


def test_image_scale_center_crop_then_resize(astronaut: np.ndarray, ctx: NodeContext, convert: str,
                                             photo: Path) -> None:
    # 512x512 to 300x200: ComfyUI keeps the middle 342 rows (y = round(85.33) = 85) before scaling.
    assert ops.center_crop_box(512, 512, 300, 200) == (0, 85, 512, 342)
    (scaled,) = nodes.impls["ImageScale"](ctx, image=astronaut, upscale_method="bilinear", width=300, height=200,
                                    crop="center")
    reference = magick(convert, photo, "-crop", "512x342+0+85", "+repage", "-filter", "Triangle",
                       "-resize", "300x200!")
    assert_close(scaled, reference)


def test_image_scale_zero_side_keeps_aspect(ctx: NodeContext) -> None:
    image = np.zeros((1, 40, 100, 3), np.float32)
    assert nodes.impls["ImageScale"](ctx, image=image, upscale_method="area", width=0, height=20,
                               crop="disabled")[0].shape == (1, 20, 50, 3)
    assert nodes.impls["ImageScale"](ctx, image=image, upscale_method="area", width=30, height=0,
                               crop="disabled")[0].shape == (1, 12, 30, 3)
    assert nodes.impls["ImageScale"](ctx, image=image, upscale_method="area", width=0, height=0,
                               crop="disabled")[0] is not None


def test_image_blur_matches_imagemagick(astronaut: np.ndarray, ctx: NodeContext, convert: str,
                                        photo: Path) -> None:
    (blurred,) = nodes.impls["ImageBlur"](ctx, image=astronaut, blur_radius=4, sigma=0.75)
    # ComfyUI's sigma is in units of the radius: 0.75 * 4 = 3 pixels.
    assert_close(blurred, magick(convert, photo, "-virtual-pixel", "mirror", "-gaussian-blur", "4x3"))


def test_image_crop_matches_imagemagick_and_clamps(astronaut: np.ndarray, ctx: NodeContext, convert: str,
                                                  photo: Path) -> None:
    (cropped,) = nodes.impls["ImageCrop"](ctx, image=astronaut, width=120, height=80, x=30, y=200)
    assert_close(cropped, magick(convert, photo, "-crop", "120x80+30+200", "+repage"))
    # Past the edge, ComfyUI clamps x into the image and returns what is left of the box.
    (edge,) = nodes.impls["ImageCrop"](ctx, image=astronaut, width=600, height=100, x=700, y=500)
    assert edge.shape == (1, 12, 1, 3)
    assert_close(edge, magick(convert, photo, "-crop", "1x12+511+500", "+repage"))


def test_image_invert_matches_imagemagick(astronaut: np.ndarray, ctx: NodeContext, convert: str,
                                          photo: Path) -> None:
    (inverted,) = nodes.impls["ImageInvert"](ctx, image=astronaut)
    assert_close(inverted, magick(convert, photo, "-negate"))
    assert_close(inverted, 1.0 - astronaut, 1e-5)


def test_non_rgb_channels_are_processed_each_on_its_own(ctx: NodeContext) -> None:
    rgba = (np.random.default_rng(1).integers(0, 256, (2, 5, 4, 4)) / 255).astype(np.float32)
    (inverted,) = nodes.impls["ImageInvert"](ctx, image=rgba)
    assert_close(inverted, 1.0 - rgba, 1e-5)
    (blurred,) = nodes.impls["ImageBlur"](ctx, image=rgba, blur_radius=1, sigma=1.0)
    (blurred_rgb,) = nodes.impls["ImageBlur"](ctx, image=rgba[..., :3], blur_radius=1, sigma=1.0)
    assert blurred.shape == rgba.shape
    assert_close(blurred[..., :3], blurred_rgb, 1e-6)


def _reflect_convolve(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """The formula's convolution (correlation, as torch's conv2d) with reflect padding, in float64."""
    radius = kernel.shape[0] // 2
    padded = np.pad(image.astype(np.float64), ((radius, radius), (radius, radius), (0, 0)), mode="reflect")
    height, width = image.shape[:2]
    out = np.zeros(image.shape, np.float64)
    for dy in range(kernel.shape[0]):
        for dx in range(kernel.shape[1]):
            out += kernel[dy, dx] * padded[dy:dy + height, dx:dx + width]
    return out


@pytest.mark.parametrize(("radius", "sigma", "alpha"), [(1, 1.0, 1.0), (2, 0.6, 0.5), (3, 2.0, 2.5)])
def test_image_sharpen_follows_its_formula(ctx: NodeContext, radius: int, sigma: float, alpha: float) -> None:
    # 8-bit values are exact in ImageMagick's 16-bit quanta, so only the output quantisation remains.
    image = (np.random.default_rng(radius).integers(0, 256, (10, 12, 3)) / 255).astype(np.float32)
    axis = np.linspace(-1, 1, 2 * radius + 1)
    gaussian = np.exp(-(axis[:, None] ** 2 + axis[None, :] ** 2) / (2 * sigma**2))
    kernel = -(alpha * 10) * gaussian / gaussian.sum()
    kernel[radius, radius] -= kernel.sum() - 1.0
    expected = np.clip(_reflect_convolve(image, kernel), 0.0, 1.0)

    (sharpened,) = nodes.impls["ImageSharpen"](ctx, image=image[None], sharpen_radius=radius, sigma=sigma,
                                         alpha=alpha)
    interior = np.s_[radius:-radius, radius:-radius]
    assert np.abs(sharpened[0][interior] - expected[interior]).max() < 2e-5
    # Edge mode: ImageMagick's "mirror" virtual pixels repeat the edge pixel where ComfyUI's reflect
    # padding does not, so only the outer `radius` rows/columns may differ (and stay within [0, 1]).
    assert sharpened.min() >= 0.0 and sharpened.max() <= 1.0


def test_load_image_alpha_mask_and_batch_of_frames(ctx: NodeContext) -> None:
    rgba = np.zeros((6, 4, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, np.arange(24, dtype=np.uint8).reshape(6, 4) * 10
    Image.fromarray(rgba, "RGBA").save(ctx.home / "input" / "sub" / "alpha.png")
    image, mask = nodes.impls["LoadImage"](ctx, image="sub/alpha.png")
    assert image.shape == (1, 6, 4, 3) and np.allclose(image[..., 0], 200 / 255, atol=1e-6)
    assert np.allclose(mask[0], 1.0 - rgba[..., 3] / 255.0, atol=1e-6)

    frames = [Image.new("RGB", (5, 3), color) for color in ("red", "blue")]
    frames[0].save(ctx.home / "input" / "anim.gif", save_all=True, append_images=frames[1:])
    image, mask = nodes.impls["LoadImage"](ctx, image="anim.gif")
    assert image.shape == (2, 3, 5, 3) and mask.shape == (2, 64, 64)
    assert np.allclose(image[1, 0, 0], [0, 0, 1], atol=1e-6)


def test_load_image_applies_exif_orientation(ctx: NodeContext) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    buffer = io.BytesIO()
    Image.new("RGB", (20, 10), "white").save(buffer, format="JPEG", exif=exif)
    (ctx.home / "input" / "rotated.jpg").write_bytes(buffer.getvalue())
    image, _ = nodes.impls["LoadImage"](ctx, image="rotated.jpg")
    assert image.shape == (1, 20, 10, 3)


def test_load_image_folder_annotations_and_escapes(ctx: NodeContext) -> None:
    (ctx.home / "output").mkdir()
    Image.new("RGB", (3, 2), "green").save(ctx.home / "output" / "made.png")
    image, _ = nodes.impls["LoadImage"](ctx, image="made.png [output]")
    assert image.shape == (1, 2, 3, 3)
    for bad in ["../secret.png", "/etc/hostname", "sub/../../x.png", "x.png [output]/../../y", "missing.png",
                "../output/made.png [input]"]:
        with pytest.raises(NodeInputError) as err:
            nodes.impls["LoadImage"](ctx, image=bad)
        assert err.value.node_id == "5"
    svg = '<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"/>'
    (ctx.home / "input" / "vector.png").write_text(svg)
    (ctx.home / "input" / "truncated.png").write_bytes((ctx.home / "output" / "made.png").read_bytes()[:60])
    for refused in ["vector.png", "truncated.png"]:
        with pytest.raises(NodeInputError):
            nodes.impls["LoadImage"](ctx, image=refused)


def test_image_batch_resizes_the_second_image(ctx: NodeContext, astronaut: np.ndarray) -> None:
    (small,) = nodes.impls["EmptyImage"](ctx, width=64, height=32, batch_size=2, color=0x336699)
    assert np.allclose(small[0, 0, 0], [0x33 / 255, 0x66 / 255, 0x99 / 255])
    (batch,) = nodes.impls["ImageBatch"](ctx, image1=astronaut, image2=small)
    assert batch.shape == (3, 512, 512, 3)
    assert np.allclose(batch[1:], small[0, 0, 0], atol=1e-5)
    assert np.array_equal(batch[0], astronaut[0])


def test_header_extent_is_what_decoding_makes(ctx: NodeContext) -> None:
    # two 4x4 frames on a 100x80 canvas: coalescing makes each frame as large as the canvas
    with WandImage() as gif:
        for colour in ("red", "blue"):
            with WandImage(width=4, height=4, background=Color(colour)) as frame:
                frame.page = (100, 80, 10, 10)
                gif.sequence.append(frame)
        gif.format = "gif"
        data = gif.make_blob()
    assert ops.image_extent(data) == (100, 80, 2)
    assert ops.decode_image(data)[0].shape == (2, 80, 100, 3)


def test_load_image_refuses_files_over_the_limits_from_their_header(ctx: NodeContext) -> None:
    ctx.limits = OutputLimits(max_pixels=10_000, max_batch=4)
    frames = [Image.new("RGB", (10, 10), (i * 40, 0, 0)) for i in range(5)]
    frames[0].save(ctx.home / "input" / "five.gif", save_all=True, append_images=frames[1:])
    Image.new("RGB", (200, 100)).save(ctx.home / "input" / "wide.png")
    for name, limit in (("five.gif", "COMFYMESH_MAX_BATCH"), ("wide.png", "COMFYMESH_MAX_PIXELS")):
        with pytest.raises(NodeInputError, match=limit) as err:
            nodes.impls["LoadImage"](ctx, image=name)
        assert err.value.node_id == "5" and "Test (node 5)" in err.value.message
    Image.new("RGB", (50, 40)).save(ctx.home / "input" / "small.png")
    assert nodes.impls["LoadImage"](ctx, image="small.png")[0].shape == (1, 40, 50, 3)
