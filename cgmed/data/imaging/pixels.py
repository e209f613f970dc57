"""Intensity arrays -> the 8-bit RGB image a model sees: the value range to show, and the scaling.

Every format reader ends here: it picks the range ``low..high`` of stored values to show (a
window, two percentiles, or minimum..maximum) and :func:`gray_image` maps it linearly onto
0..255, ``round(255 * (value - low) / (high - low))`` clipped to 0..255 (halves round up).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from cgmed.data.imaging.config import Window
from cgmed.errors import BadImageError


def window_range(window: Window) -> tuple[float, float]:
    """The stored values a window shows, ``center - width/2 .. center + width/2``."""
    return window.low, window.high


def percentile_range(values: np.ndarray, percentiles: list[float]) -> tuple[float, float]:
    """``low..high`` between two percentiles of the finite values; minimum..maximum when the
    percentiles coincide (a mostly constant image); ``(0, 0)`` when no value is finite."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 0.0
    low, high = np.percentile(finite, percentiles)
    if high <= low:
        low, high = finite.min(), finite.max()
    return float(low), float(high)


def minmax_range(values: np.ndarray) -> tuple[float, float]:
    """``low..high`` = the minimum and maximum of the finite values."""
    return percentile_range(values, [0.0, 100.0])


def scale_to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """``low..high`` -> 0..255 (see the module docstring); a constant image (high <= low) is black
    and not-a-number values are 0."""
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (np.asarray(values, dtype=np.float64) - low) * 255.0 / (high - low)
    scaled = np.nan_to_num(scaled, nan=0.0, posinf=255.0, neginf=0.0)
    return np.floor(np.clip(scaled, 0.0, 255.0) + 0.5).astype(np.uint8)


def gray_image(values: np.ndarray, low: float, high: float, invert: bool = False) -> Image.Image:
    """A 2-D array of stored values -> RGB image showing ``low..high`` (``invert``: high is black,
    as DICOM's MONOCHROME1 stores it)."""
    pixels = scale_to_uint8(values, low, high)
    if invert:
        pixels = 255 - pixels
    return Image.fromarray(pixels).convert("RGB")


def color_image(pixels: np.ndarray, bits: int) -> Image.Image:
    """An RGB array with ``bits`` per sample -> 8-bit RGB image (full scale kept, nothing clipped)."""
    if pixels.dtype != np.uint8 or bits != 8:
        pixels = scale_to_uint8(pixels, 0.0, float(2**bits - 1))
    return Image.fromarray(np.ascontiguousarray(pixels))


def check_pixel_count(where: str, shape: tuple[int, ...]) -> None:
    """Refuse an image larger than PIL's decompression-bomb limit before decoding it."""
    limit = Image.MAX_IMAGE_PIXELS
    count = int(np.prod(shape[:2], dtype=np.int64))
    if limit and count > 2 * limit:
        raise BadImageError(
            where,
            f"image of {shape[0]} x {shape[1]} pixels exceeds the limit of {2 * limit} pixels "
            "(PIL's decompression-bomb guard)",
            "downsample the image, or raise PIL.Image.MAX_IMAGE_PIXELS if it is genuine",
        )
