"""What a generated world starts from: the `start` session option and start images.

A generated world's first chunk is its attention sink: every later chunk attends to it. It can be

- "engine": the engine's view of the prompt at the session's seed (the sessions' default, see
  `world.backends.registry.SESSION_DEFAULTS`): `engine.reset(seed, prompt)` and the first idle step, written
  as clean context; a prompt the engine cannot parse falls back to "text" with a notice;
- "text": generated from the prompt alone (the backend's own default for in-process callers);
- "image": a PNG or JPEG the client sends with `open` (bytes, never a path), repeated over the chunk.

This module holds the modes and the image side: `decode_start_image` turns untrusted bytes into
RGB pixels (size-limited before anything is decoded, PNG and JPEG only) and `fit_image` crops and
resizes them to the world's resolution. Pillow is imported only when an image is decoded.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np

START_MODES = ("engine", "text", "image")
IMAGE_FORMATS = ("PNG", "JPEG")
MAX_START_IMAGE_BYTES = 4 * 1024 * 1024  # encoded PNG / JPEG bytes of a start image (the open's image frame)
MAX_START_IMAGE_SIDE = 4096  # pixels, each side, checked before the image is decoded


class StartImageError(ValueError):
    """Start image bytes that cannot be used (too large, not PNG/JPEG, corrupt, too many pixels)."""


@dataclass(frozen=True)
class StartImage:
    """A decoded start image: pixels [H, W, 3] uint8 RGB at the size it was sent, plus where it came
    from (`format`, the encoded size `nbytes` and its `sha256`) for recordings."""

    pixels: np.ndarray
    format: str = "array"
    nbytes: int = 0
    sha256: str | None = None

    def facts(self) -> dict:
        """JSON facts recorded with a world started from this image (no pixels)."""
        height, width = self.pixels.shape[:2]
        return {"format": self.format, "width": int(width), "height": int(height), "bytes": self.nbytes,
                "sha256": self.sha256}  # fmt: skip


def decode_start_image(data: bytes) -> StartImage:
    """PNG or JPEG bytes -> StartImage with RGB pixels. Raises StartImageError naming the problem.

    The byte size and the pixel size (each side <= MAX_START_IMAGE_SIDE, read from the file's
    header) are checked before any pixel is decoded, so a small file claiming a huge picture costs
    nothing. EXIF orientation is applied; alpha is dropped; palette, grey and CMYK become RGB."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise StartImageError(f"the start image must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data:
        raise StartImageError("the start image is empty")
    if len(data) > MAX_START_IMAGE_BYTES:
        raise StartImageError(f"the start image has {len(data)} bytes; the limit is {MAX_START_IMAGE_BYTES}")
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as image:
            width, height = image.size
            if not (0 < width <= MAX_START_IMAGE_SIDE and 0 < height <= MAX_START_IMAGE_SIDE):
                raise StartImageError(f"the start image is {width}x{height} pixels; the limit is "
                                      f"{MAX_START_IMAGE_SIDE} pixels a side")  # fmt: skip
            fmt = image.format
            image.load()
            rgb = ImageOps.exif_transpose(image).convert("RGB")
    except StartImageError:
        raise
    except UnidentifiedImageError:
        raise StartImageError("the start image is not a PNG or JPEG file") from None
    except Exception as exc:  # untrusted bytes: any decoder failure is the image's fault, reported
        raise StartImageError(f"the start image cannot be decoded (corrupt or truncated {_kind(data)}): "
                              f"{type(exc).__name__}: {str(exc)[:160]}") from None  # fmt: skip
    pixels = np.asarray(rgb, dtype=np.uint8).copy()
    return StartImage(pixels, fmt or "?", len(data), hashlib.sha256(data).hexdigest())


def _kind(data: bytes) -> str:
    if data.startswith(b"\x89PNG"):
        return "PNG"
    return "JPEG" if data.startswith(b"\xff\xd8") else "image"


def as_start_image(value: object) -> StartImage:
    """A StartImage from a StartImage, PNG/JPEG bytes, or an [H, W, 3] uint8 array (e.g. a
    recording's start.png read back). Raises StartImageError."""
    if isinstance(value, StartImage):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return decode_start_image(value)
    pixels = np.asarray(value)
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3 or 0 in pixels.shape:
        raise StartImageError(f"a start image array must be [H, W, 3] uint8, got {pixels.dtype} {list(pixels.shape)}")
    if max(pixels.shape[:2]) > MAX_START_IMAGE_SIDE:
        raise StartImageError(f"the start image is {pixels.shape[1]}x{pixels.shape[0]} pixels; the limit is "
                              f"{MAX_START_IMAGE_SIDE} pixels a side")  # fmt: skip
    return StartImage(np.ascontiguousarray(pixels))


def fit_image(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """[H, W, 3] uint8 -> [height, width, 3] uint8: the centre crop with the target's aspect ratio,
    resized with Lanczos filtering. An image already at that size is returned unchanged (a copy)."""
    h, w = pixels.shape[:2]
    if (h, w) == (height, width):
        return np.array(pixels, dtype=np.uint8, copy=True)
    from PIL import Image

    if w * height > h * width:  # wider than the target: crop the sides
        crop_w = max(1, round(h * width / height))
        left = (w - crop_w) // 2
        box = (left, 0, left + crop_w, h)
    else:  # taller: crop top and bottom
        crop_h = max(1, round(w * height / width))
        top = (h - crop_h) // 2
        box = (0, top, w, top + crop_h)
    image = Image.fromarray(np.ascontiguousarray(pixels), "RGB")
    # Crop, then resize: resize(box=...) would let the filter reach past the crop's edges.
    resized = image.crop(box).resize((width, height), Image.Resampling.LANCZOS)
    return np.asarray(resized, dtype=np.uint8).copy()
