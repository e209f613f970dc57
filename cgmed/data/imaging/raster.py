"""PNG, JPEG, TIFF and every other format PIL reads -> RGB.

8-bit images (L, RGB, P, RGBA ...) convert exactly as ``Image.convert("RGB")`` does. Grayscale
images with more bits per sample (PIL modes ``I;16``, ``I;16B``, ``I``, ``F``: the usual export of
DICOM) are scaled to 0..255 by the modality's configured window or by percentiles of their values,
where ``convert("RGB")`` would clip every value above 255 to white.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from cgmed.data.imaging.config import ImageConfig
from cgmed.data.imaging.pixels import gray_image, percentile_range, window_range

HIGH_BIT_DEPTH_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})


def read_raster(path: Path, cfg: ImageConfig, modality: str | None = None) -> Image.Image:
    """An image file PIL opens as the RGB image a model sees (see the module docstring)."""
    with Image.open(path) as image:
        if image.mode not in HIGH_BIT_DEPTH_MODES:
            return image.convert("RGB")
        values = np.asarray(image, dtype=np.float64)
    window = cfg.window_for(modality)
    low, high = window_range(window) if window else percentile_range(values, cfg.percentiles)
    return gray_image(values, low, high)
