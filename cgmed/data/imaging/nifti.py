"""NIfTI volumes (nibabel, ``.nii`` / ``.nii.gz``) -> RGB: one 2-D slice, windowed or percentile-scaled.

The slice is taken along ``image.nifti_slice.axis`` of the voxel array as stored (no reorientation),
at ``image.nifti_slice.index`` or the middle; a 4-D (or higher) image shows its first volume. Only
that slice is read from disk, with the file's scaling (scl_slope/scl_inter) applied by nibabel.
"""

from __future__ import annotations

from pathlib import Path

import nibabel
import numpy as np
from PIL import Image

from cgmed.data.imaging.config import ImageConfig
from cgmed.data.imaging.pixels import check_pixel_count, gray_image, percentile_range, window_range
from cgmed.errors import BadImageError


def read_nifti(path: Path, cfg: ImageConfig, modality: str | None = None) -> Image.Image:
    """The configured slice of a NIfTI image as the RGB image a model sees (see the module docstring)."""
    where = str(path)
    volume = nibabel.load(path)
    slicer = slice_of(tuple(volume.shape), cfg, where)
    kept = [size for size, part in zip(volume.shape, slicer, strict=True) if isinstance(part, slice)]
    check_pixel_count(where, tuple(kept))
    values = np.asarray(volume.dataobj[slicer], dtype=np.float64)
    window = cfg.window_for(modality)
    low, high = window_range(window) if window else percentile_range(values, cfg.percentiles)
    return gray_image(values, low, high)


def slice_of(shape: tuple[int, ...], cfg: ImageConfig, where: str) -> tuple[slice | int, ...]:
    """The index expression selecting the configured 2-D slice of an array of ``shape``."""
    if len(shape) < 2:
        raise BadImageError(
            where, f"NIfTI image of shape {shape} has fewer than 2 dimensions", "drop this file"
        )
    if len(shape) == 2:
        return (slice(None), slice(None))
    axis, size = cfg.nifti_slice.axis, shape[cfg.nifti_slice.axis]
    index = size // 2 if cfg.nifti_slice.index is None else cfg.nifti_slice.index
    if not 0 <= index < size:
        raise BadImageError(
            where,
            f"slice index {index} on axis {axis} is out of range: the volume of shape {shape} "
            f"has {size} slices there (valid 0..{size - 1})",
            f"set image.nifti_slice.index to a value in 0..{size - 1}, or null for the middle slice",
        )
    spatial: list[slice | int] = [slice(None)] * 3
    spatial[axis] = index
    return (*spatial, *[0] * (len(shape) - 3))
