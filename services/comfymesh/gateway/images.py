"""Decoding images that clients name or send (previews, masks): common raster formats only, a pixel limit
checked from the header before any decode, every failure one `ImageRefused` that names the file as the
client knows it (never by its absolute path), and the decode's memory handed back to the system."""

from __future__ import annotations

import ctypes
import ctypes.util
import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from PIL import Image, UnidentifiedImageError

# the formats a browser or ComfyUI produces; others (EPS runs Ghostscript, PSD, ...) are not decoded here
FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
# buffers this big or bigger (Pillow allocates images in blocks of up to 16 MiB) are mapped on their own
_MAP_ALONE_BYTES = 4 * 1024 * 1024
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


class ImageRefused(Exception):
    """A 4xx: the image cannot be read or is over the pixel limit; the message says which and what to do."""


def return_big_buffers_when_freed() -> None:
    """Call once at start: glibc serves freed big buffers again from the heap of the thread that freed them
    (its mmap threshold rises to the largest buffer freed), so each worker thread's arena keeps a big decode's
    memory for good; the gateway grew by hundreds of MiB after a few previews. With a fixed threshold, every
    buffer of 4 MiB or more is mapped on its own and unmapped when freed; smaller ones are unaffected."""
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if libc is not None and hasattr(libc, "mallopt"):  # glibc; other allocators return big buffers anyway
        libc.mallopt(_M_MMAP_THRESHOLD, _MAP_ALONE_BYTES)


@contextmanager
def open_image(source: Path | bytes, shown: str, max_pixels: int) -> Iterator[Image.Image]:
    """The image in `source` (a file, or bytes a client sent), opened lazily; `shown` names it in messages."""
    try:
        with Image.open(source if isinstance(source, Path) else io.BytesIO(source), formats=FORMATS) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise ImageRefused(f"{shown} is {width}x{height} = {width * height} pixels, over the limit of "
                                   f"{max_pixels} (COMFYMESH_MAX_PIXELS): use a smaller image")
            yield image
    except Image.DecompressionBombError:
        raise ImageRefused(f"{shown} declares more pixels than any image may have here "
                           f"(limit {max_pixels}, COMFYMESH_MAX_PIXELS): use a smaller image") from None
    except UnidentifiedImageError:
        raise ImageRefused(f"{shown} is not an image in a format read here ({', '.join(FORMATS)})") from None
    except (OSError, ValueError, SyntaxError) as exc:  # Pillow's ways of saying the data is damaged
        reason = str(exc).replace(str(source), shown) if isinstance(source, Path) else str(exc)
        raise ImageRefused(f"{shown} could not be decoded: {reason}") from None


__all__ = ["FORMATS", "ImageRefused", "open_image", "return_big_buffers_when_freed"]
