"""The one image loader: how an image file becomes an input tensor (a spec: size and resize mode, mean/std or scale,
RGB/BGR/grey, layout; presets), for calibration data, evaluation data and `onnxdtype run --input photo.png` alike."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onnxdtype.errors import OnnxDtypeError
from onnxdtype.io import first_line

RESIZE_MODES = ("stretch", "letterbox", "short-side")


IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm"})
PRESETS: dict[str, dict] = {
    "unit": {"scale": 1 / 255, "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)},
    "imagenet": {"scale": 1 / 255, "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)},
}


@dataclass(frozen=True)
class ImageSpec:
    """How images become an input tensor: x = (pixel * scale - mean) / std, per channel in the model's order.

    resize: "stretch" to size (height, width); "letterbox" keeps the aspect ratio inside size and pads the
    rest with `pad`; "short-side" scales the short side to `short_side`, then pads height and width up to a
    multiple of `multiple` (for models with dynamic height/width). size None: the input's static dims.
    layout "auto" reads NCHW / NHWC off the input's shape; dtype None: the input's own. Channels RGB or BGR from spec
    files; L (one grey channel, the first mean/std) for single-channel inputs fed by `onnxdtype run --input`.
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


def load_image_spec(spec: str | Path | dict | ImageSpec) -> ImageSpec:
    """A spec from a preset name ("imagenet", "unit"), a .json/.toml file, a dict, or an ImageSpec.

    Files and dicts may start from a preset ({"preset": "imagenet", "size": [224, 224]}).
    """
    if isinstance(spec, ImageSpec):
        return spec
    where = "preprocessing spec"
    if isinstance(spec, (str, Path)):
        if str(spec).lower() in PRESETS:
            return _spec_from_dict({"preset": str(spec).lower()}, where)
        where = str(spec)
        spec = _read_spec_file(Path(spec))
    if not isinstance(spec, dict):
        raise OnnxDtypeError(f"{where}: expected a table of settings, got {type(spec).__name__}")
    return _spec_from_dict(spec, where)


def _read_spec_file(path: Path) -> dict:
    if not path.is_file():
        raise OnnxDtypeError(f"{path}: no such preprocessing spec (or a preset: {', '.join(PRESETS)})")
    try:
        if path.suffix.lower() == ".toml":
            import tomllib  # Python >= 3.11

            return tomllib.loads(path.read_text())
        return json.loads(path.read_text())
    except ImportError:
        raise OnnxDtypeError(f"{path}: TOML specs need Python >= 3.11; write the spec as JSON") from None
    except (OSError, ValueError) as exc:  # JSONDecodeError and TOMLDecodeError are ValueErrors
        raise OnnxDtypeError(f"{path}: not a readable JSON/TOML spec ({str(exc).splitlines()[0]})") from None


def _spec_from_dict(raw: dict, where: str) -> ImageSpec:
    raw = dict(raw)
    preset = raw.pop("preset", None)
    values: dict = {}
    if preset is not None:
        if str(preset).lower() not in PRESETS:
            raise OnnxDtypeError(f"{where}: unknown preset {preset!r}; presets: {', '.join(PRESETS)}")
        values.update(PRESETS[str(preset).lower()])
    fields = {f.name for f in dataclasses.fields(ImageSpec)}
    unknown = sorted(set(raw) - fields)
    if unknown:
        raise OnnxDtypeError(f"{where}: unknown setting {', '.join(unknown)}; "
                             f"valid: preset, {', '.join(sorted(fields))}")
    values.update(raw)
    try:
        if values.get("size") is not None:
            size = values["size"]
            size = (size, size) if isinstance(size, int) else tuple(int(v) for v in size)
            if len(size) != 2 or min(size) < 1:
                raise ValueError("size must be [height, width] of positive integers")
            values["size"] = size
        for key in ("mean", "std"):
            if key in values:
                v = values[key]
                values[key] = tuple(float(x) for x in ((v,) * 3 if isinstance(v, (int, float)) else v))
                if len(values[key]) != 3:
                    raise ValueError(f"{key} must be one number or three")
        if any(s == 0 for s in values.get("std", (1.0,))):
            raise ValueError("std must not be 0")
        for key in ("scale", "pad"):
            if key in values:
                values[key] = float(values[key])
        for key in ("short_side", "multiple"):
            if values.get(key) is not None:
                values[key] = int(values[key])
                if values[key] < 1:
                    raise ValueError(f"{key} must be a positive integer")
        spec = ImageSpec(**values)
    except (TypeError, ValueError) as exc:
        raise OnnxDtypeError(f"{where}: {exc}") from None
    choices = {"resize": RESIZE_MODES, "channels": ("RGB", "BGR"), "layout": ("auto", "NCHW", "NHWC")}
    for key, allowed in choices.items():
        if getattr(spec, key) not in allowed:
            raise OnnxDtypeError(f"{where}: {key} {getattr(spec, key)!r} is not one of {', '.join(allowed)}")
    if spec.resize == "short-side" and spec.short_side is None:
        raise OnnxDtypeError(f"{where}: resize 'short-side' needs short_side (the short side's length in pixels)")
    return spec


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
