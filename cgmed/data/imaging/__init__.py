"""Medical image formats: DICOM, NIfTI and high-bit-depth PNG/TIFF turned into the RGB images models see.

- ``config``: :class:`ImageConfig` (the ``image`` config group), windows and their presets;
- ``reader``: :func:`open_image` (the one entry point), :func:`verify_image` (the data checks)
  and :func:`image_format`;
- ``dicom``, ``nifti``, ``raster``: one reader per family of formats;
- ``pixels``: the shared intensity scaling (window, percentiles, minimum..maximum -> 0..255).
"""

from __future__ import annotations

from cgmed.data.imaging.config import WINDOW_PRESETS, ImageConfig, SliceConfig, Window
from cgmed.data.imaging.reader import image_format, open_image, verify_image

__all__ = [
    "ImageConfig",
    "SliceConfig",
    "Window",
    "WINDOW_PRESETS",
    "image_format",
    "open_image",
    "verify_image",
]
