"""Image operations done by ImageMagick (Wand) on IMAGE batches (float32 numpy [B,H,W,C] in [0,1]).

Pixels cross into ImageMagick through MagickImportImagePixels/MagickExportImagePixels with float
storage, called on numpy buffers (Wand's list-based wrappers copy every value through Python).
The library is Q16 without HDRI: values are held as 16-bit integers, so a round trip is within
1/131070 and every operation's result is clamped to [0, 1].
"""

from __future__ import annotations

import ctypes
import re
from collections.abc import Callable, Iterator

import numpy as np
from wand.api import library
from wand.color import Color
from wand.exceptions import WandException
from wand.image import STORAGE_TYPES, Image

from comfymesh.contracts.errors import StageRequestError

# ComfyUI's upscale methods as ImageMagick resize filters. ImageMagick maps pixel centres the way
# torch does with align_corners=False, so upscales agree; on downscales ImageMagick widens the filter
# (antialiasing) where torch's bilinear/bicubic sample without it.
#   nearest-exact -> Point     (nearest pixel centre, like torch's nearest-exact)
#   bilinear      -> Triangle  (linear interpolation)
#   area          -> Box       (pixel-area average on reduction)
#   bicubic       -> Cubic with B=0, C=0.75: the Keys cubic with a = -0.75 that torch uses
#                    (ImageMagick's Catrom is a = -0.5)
#   lanczos       -> Lanczos   (3-lobe windowed sinc, as Pillow's LANCZOS that ComfyUI calls)
RESIZE_FILTERS: dict[str, tuple[str, dict[str, str]]] = {
    "nearest-exact": ("point", {}),
    "bilinear": ("triangle", {}),
    "area": ("box", {}),
    "bicubic": ("cubic", {"filter:b": "0", "filter:c": "0.75"}),
    "lanczos": ("lanczos", {}),
}

# ImageMagick has no "reflect" (edge not repeated) virtual pixels as ComfyUI's torch padding has;
# "mirror" repeats the edge pixel, so the outer `radius` rows and columns of blur/sharpen differ slightly.
EDGE_MODE = "mirror"

_FLOAT = STORAGE_TYPES.index("float")
_CHANNEL_MAP = b"RGB"


def _buffer(array: np.ndarray) -> ctypes.c_void_p:
    return array.ctypes.data_as(ctypes.c_void_p)


def to_wand(frame: np.ndarray) -> Image:
    """One [H,W,3] float frame as an opaque 16-bit RGB Wand image (the caller closes it)."""
    pixels = np.ascontiguousarray(frame, dtype=np.float32)
    height, width, _ = pixels.shape
    image = Image(width=width, height=height, background=Color("black"))
    # A new canvas carries an alpha channel that ImageMagick would weight colours by; drop it.
    image.alpha_channel = False
    image.depth = 16
    try:
        if not library.MagickImportImagePixels(image.wand, 0, 0, width, height, _CHANNEL_MAP, _FLOAT,
                                               _buffer(pixels)):
            image.raise_exception()
    except BaseException:
        image.close()
        raise
    return image


def from_wand(image: Image, channel_map: str = "RGB") -> np.ndarray:
    """The image's pixels as float32 [H,W,len(channel_map)]."""
    width, height = image.size
    pixels = np.empty((height, width, len(channel_map)), dtype=np.float32)
    if not library.MagickExportImagePixels(image.wand, 0, 0, width, height, channel_map.encode(), _FLOAT,
                                           _buffer(pixels)):
        image.raise_exception()
    return pixels


def _channel_groups(frame: np.ndarray) -> Iterator[np.ndarray]:
    # RGB goes through as one image; any other layout one channel at a time as grey, so alpha or
    # extra channels are filtered like colour instead of being treated as ImageMagick's alpha.
    if frame.shape[2] == 3:
        yield frame
    else:
        for channel in range(frame.shape[2]):
            yield np.repeat(frame[:, :, channel:channel + 1], 3, axis=2)


def wand_reason(exc: WandException) -> str:
    """ImageMagick's complaint without the blob's name and the source location (`@ error/png.c/...`)."""
    return re.split(r" [`@]", str(exc), maxsplit=1)[0].strip() or type(exc).__name__


def map_frames(images: np.ndarray, operation: Callable[[Image], None]) -> np.ndarray:
    """Apply an in-place Wand operation to every frame (and channel group) of a batch."""
    frames = []
    try:
        for frame in images:
            groups = []
            for group in _channel_groups(frame):
                with to_wand(group) as image:
                    operation(image)
                    groups.append(from_wand(image))
            frames.append(groups[0] if frame.shape[2] == 3 else np.concatenate([g[:, :, :1] for g in groups], 2))
    except WandException as exc:  # ImageMagick's resource limits, mostly
        raise StageRequestError(f"ImageMagick could not process a {images.shape[2]}x{images.shape[1]} image: "
                                f"{wand_reason(exc)}") from exc
    return np.stack(frames)


def resize(images: np.ndarray, width: int, height: int, method: str) -> np.ndarray:
    """Resize every frame to exactly width x height with the filter RESIZE_FILTERS maps `method` to."""
    filter_name, artifacts = RESIZE_FILTERS[method]

    def operation(image: Image) -> None:
        for key, value in artifacts.items():
            image.artifacts[key] = value
        image.resize(width, height, filter=filter_name)

    return map_frames(images, operation)


def center_crop_box(width: int, height: int, target_width: int,
                    target_height: int) -> tuple[int, int, int, int]:
    """(x, y, w, h) of ComfyUI's centre crop to the target aspect ratio, taken before scaling.

    The excess on the wider (or taller) side is split evenly; Python's round (half to even) as ComfyUI.
    """
    old_aspect = width / height
    new_aspect = target_width / target_height
    x = y = 0
    if old_aspect > new_aspect:
        x = round((width - width * (new_aspect / old_aspect)) / 2)
    elif old_aspect < new_aspect:
        y = round((height - height * (old_aspect / new_aspect)) / 2)
    return x, y, width - 2 * x, height - 2 * y


def crop(images: np.ndarray, x: int, y: int, width: int, height: int) -> np.ndarray:
    """The region at (x, y) of size width x height; the box must lie inside the image."""
    return map_frames(images, lambda image: image.crop(x, y, width=width, height=height))


def invert(images: np.ndarray) -> np.ndarray:
    """1 - x on every channel (ImageMagick's negate)."""
    return map_frames(images, lambda image: image.negate())


def gaussian_blur(images: np.ndarray, radius: int, sigma: float) -> np.ndarray:
    """ImageMagick's gaussian blur with a (2·radius+1)² kernel of standard deviation `sigma` pixels."""

    def operation(image: Image) -> None:
        image.virtual_pixel = EDGE_MODE
        image.gaussian_blur(radius=radius, sigma=sigma)

    return map_frames(images, operation)


def convolve(images: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Convolve with a user kernel (odd size, symmetric: ImageMagick flips it), result clamped to [0, 1]."""
    rows, cols = kernel.shape
    # repr keeps every float64 digit, so ImageMagick gets the kernel we computed, not a rounded one.
    spec = f"{cols}x{rows}: " + ",".join(repr(float(v)) for v in kernel.ravel())

    def operation(image: Image) -> None:
        image.virtual_pixel = EDGE_MODE
        image.morphology(method="convolve", kernel=spec)

    return map_frames(images, operation)


def comfy_gaussian_kernel(radius: int, sigma: float) -> np.ndarray:
    """ComfyUI's normalized (2r+1)² gaussian, sampled on linspace(-1, 1) (so sigma·r in pixels)."""
    axis = np.linspace(-1.0, 1.0, 2 * radius + 1)
    weights = np.exp(-(axis[:, None] ** 2 + axis[None, :] ** 2) / (2.0 * sigma * sigma))
    return weights / weights.sum()


def sharpen_kernel(radius: int, sigma: float, alpha: float) -> np.ndarray:
    """ImageSharpen's kernel: -(10·alpha)·gaussian, centre raised so the kernel sums to 1."""
    kernel = comfy_gaussian_kernel(radius, sigma) * -(alpha * 10.0)
    kernel[radius, radius] += 1.0 - kernel.sum()
    return kernel


class UnreadableImage(ValueError):
    """The bytes are not an image LoadImage reads: another format, or a damaged or truncated file."""


def sniff_format(data: bytes) -> str | None:
    """The raster format named by the file's magic bytes, or None.

    Chosen before ImageMagick sees the bytes and then forced, so vector and script formats (SVG, MVG,
    PostScript...) never reach a coder, whatever the file is called.
    """
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"  # MPO files too: their first image, as ComfyUI keeps
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:2] == b"BM":
        return "bmp"
    if data[:4] in (b"II*\0", b"MM\0*"):
        return "tiff"
    return None


def _raster_format(data: bytes) -> str:
    file_format = sniff_format(data)
    if file_format is None:
        raise UnreadableImage("not a PNG, JPEG, GIF, WebP, BMP or TIFF image")
    return file_format


def image_extent(data: bytes) -> tuple[int, int, int]:
    """(width, height, frames) at most of what decode_image makes of the file, from its headers alone
    (ImageMagick's ping: no pixel is decoded). Coalesced frames each take the size of the canvas."""
    try:
        with Image.ping(blob=data, format=_raster_format(data)) as image:
            sizes = [(frame.size, frame.page[:2]) for frame in image.sequence]
    except WandException as exc:
        raise UnreadableImage(f"the file is damaged or truncated ({wand_reason(exc)})") from exc
    if not sizes:
        raise UnreadableImage("the file holds no image")
    if len(sizes) == 1:
        (width, height), _ = sizes[0]
        return width, height, 1
    width = max(max(size[0], page[0]) for size, page in sizes)
    height = max(max(size[1], page[1]) for size, page in sizes)
    return width, height, len(sizes)


def decode_image(data: bytes) -> tuple[np.ndarray, np.ndarray | None]:
    """Decode an image file: EXIF orientation applied, RGB frames [B,H,W,3], alpha [B,H,W] or None.

    Animated files become a batch of full (coalesced) frames; frames of another size than the first
    are dropped, as ComfyUI does. UnreadableImage for anything else than a whole raster image.
    """
    try:
        return _decode(data, _raster_format(data))
    except WandException as exc:
        raise UnreadableImage(f"the file is damaged or truncated ({wand_reason(exc)})") from exc


def _decode(data: bytes, file_format: str) -> tuple[np.ndarray, np.ndarray | None]:
    with Image(blob=data, format=file_format) as image:
        if len(image.sequence) > 1:
            image.coalesce()
        frames: list[np.ndarray] = []
        alphas: list[np.ndarray] = []
        has_alpha = False
        for single in image.sequence:
            with Image(image=single) as frame:
                frame.auto_orient()
                if frame.colorspace not in ("srgb", "rgb", "gray"):
                    frame.transform_colorspace("srgb")
                if frames and frame.size != (frames[0].shape[1], frames[0].shape[0]):
                    continue
                has_alpha = has_alpha or bool(frame.alpha_channel)
                pixels = from_wand(frame, "RGBA")  # alpha reads as 1 where there is none
                frames.append(pixels[:, :, :3])
                alphas.append(pixels[:, :, 3])
    if not frames:
        raise UnreadableImage("the file holds no image")
    return np.stack(frames), (np.stack(alphas) if has_alpha else None)
