"""The one image loader: how an image file becomes an input tensor, for calibration data, evaluation data and
`onnxdtype run --input photo.png` alike."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onnxdtype.errors import OnnxDtypeError
from onnxdtype.io import first_line

RESIZE_MODES = ("stretch", "letterbox", "short-side")
CHANNEL_ORDERS = ("RGB", "BGR", "L")  # L: one grey channel


@dataclass(frozen=True)
class ImageSpec:
    """How images become an input tensor: x = (pixel * scale - mean) / std, per channel in the model's order.

    resize: "stretch" to size (height, width); "letterbox" keeps the aspect ratio inside size and pads the
    rest with `pad`; "short-side" scales the short side to `short_side`, then pads height and width up to a
    multiple of `multiple` (for models with dynamic height/width). size None: the input's static dims.
    layout "auto" reads NCHW / NHWC off the input's shape; dtype None: the input's own. channels L: one grey
    channel (the first mean/std apply).
    """
    size: tuple[int, int] | None = None
    resize: str = "stretch"
    short_side: int | None = None
    multiple: int = 32
    pad: float = 0.0
    scale: float = 1 / 255
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    channels: str = "RGB"
    layout: str = "auto"
    dtype: str | None = None


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image file, read from its header."""
    return _open(path, "RGB").size[::-1]


def _open(path: Path, mode: str):
    try:
        from PIL import Image
    except ImportError:
        raise OnnxDtypeError("reading images needs Pillow (pip install Pillow); or pass a .npy") from None
    try:
        with Image.open(path) as opened:
            return opened.convert(mode)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise OnnxDtypeError(f"{path}: not a readable image ({first_line(exc, 200)})") from None


def read_image(path: Path, spec: ImageSpec, dtype: np.dtype) -> np.ndarray:
    """One image as a 1-image batch: resized, channel-ordered, normalized and laid out as `spec` says (its layout
    and size already resolved), in `dtype` (integer inputs get rounded, clipped pixels)."""
    image = _open(path, "L" if spec.channels == "L" else "RGB")
    pixels = _resize(image, spec).astype(np.float32)
    if spec.channels == "BGR":
        pixels = pixels[..., ::-1]
    channels = pixels.shape[-1]
    mean, std = np.array(spec.mean[:channels], np.float32), np.array(spec.std[:channels], np.float32)
    pixels = (pixels * spec.scale - mean) / std
    if spec.layout == "NCHW":
        pixels = pixels.transpose(2, 0, 1)
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        pixels = np.clip(np.rint(pixels), info.min, info.max)
    return np.ascontiguousarray(pixels[None], dtype=dtype)


def _resize(image, spec: ImageSpec) -> np.ndarray:
    """HxWx3 uint8 pixels at the spec's size: stretched, letterboxed (centred) or short-side scaled and padded."""
    from PIL import Image

    width, height = image.size
    if spec.resize == "stretch":
        return np.asarray(image.resize((spec.size[1], spec.size[0]), Image.BILINEAR)).reshape(*spec.size, -1)
    if spec.resize == "letterbox":
        out_h, out_w = spec.size
        ratio = min(out_h / height, out_w / width)
    else:
        ratio = spec.short_side / min(height, width)
    new_w, new_h = max(1, round(width * ratio)), max(1, round(height * ratio))
    if spec.resize == "short-side":
        out_h, out_w = (math.ceil(n / spec.multiple) * spec.multiple for n in (new_h, new_w))
        top = left = 0
    else:
        top, left = (out_h - new_h) // 2, (out_w - new_w) // 2
    resized = np.asarray(image.resize((new_w, new_h), Image.BILINEAR)).reshape(new_h, new_w, -1)
    canvas = np.full((out_h, out_w, resized.shape[-1]), spec.pad, np.float32)
    canvas[top:top + new_h, left:left + new_w] = resized
    return canvas
