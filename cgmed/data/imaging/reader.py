"""``open_image``: any accepted image file -> the 8-bit RGB PIL image a model sees.

The format is told by the file name (``.dcm``/``.dicom``, ``.nii``/``.nii.gz``, or an extension
PIL knows) and, for a name without a known extension, by DICOM's ``DICM`` marker at byte 128
(scanner exports such as ``IM000001`` carry no extension). Every failure to read or decode a file
is a :class:`BadImageError` naming it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from PIL import Image

from cgmed.data.imaging.config import ImageConfig
from cgmed.errors import BadImageError, CgmedError

ImageFormat = Literal["dicom", "nifti", "raster"]
DICOM_SUFFIXES = (".dcm", ".dicom")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
FORMAT_NAMES = {"dicom": "DICOM", "nifti": "NIfTI", "raster": "image"}


def image_format(path: str | os.PathLike[str]) -> ImageFormat:
    """Which reader a file needs: ``dicom``, ``nifti`` or ``raster`` (anything PIL opens)."""
    name = Path(path).name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(DICOM_SUFFIXES):
        return "dicom"
    if Path(name).suffix in Image.registered_extensions():
        return "raster"
    return "dicom" if _has_dicom_marker(Path(path)) else "raster"


def open_image(
    path: str | os.PathLike[str], cfg: ImageConfig | None = None, modality: str | None = None
) -> Image.Image:
    """The image at ``path`` as an 8-bit RGB PIL image, converted by ``cfg`` (``image.*``).

    ``modality`` (the record's, e.g. ``CT``) picks the configured window; a DICOM file's own
    Modality tag is tried after it. Raises BadImageError naming the file when it is missing, not
    an image, truncated, larger than PIL's decompression-bomb limit, compressed in a way no
    installed plugin decodes, a DICOM without pixel data, or a NIfTI slice index out of range.
    """
    path = Path(path)
    if not path.is_file():
        problem = "is not a file" if path.exists() else "image file not found"
        raise BadImageError(str(path), problem, "check the record's image path")
    kind = image_format(path)
    try:
        return _reader(kind)(path, cfg or ImageConfig(), modality)
    except CgmedError:
        raise
    except Exception as err:  # PIL, pydicom and nibabel raise many types for broken files
        raise BadImageError(
            str(path),
            f"cannot decode this {FORMAT_NAMES[kind]} file ({type(err).__name__}: {err})",
            "re-export or drop this image",
        ) from None


def verify_image(
    path: str | os.PathLike[str], cfg: ImageConfig | None = None, modality: str | None = None
) -> None:
    """Check that ``path`` converts (:func:`open_image`), and for formats PIL reads also pass the
    format's own integrity check (PNG chunk checksums), which decoding alone does not run.
    Raises BadImageError naming the file."""
    path = Path(path)
    open_image(path, cfg, modality)
    if image_format(path) != "raster":
        return
    try:
        with Image.open(path) as image:
            image.verify()
    except Exception as err:  # PIL raises many types for broken files
        raise BadImageError(
            str(path),
            f"fails the image's integrity check ({type(err).__name__}: {err})",
            "re-export or drop this image",
        ) from None


def _reader(kind: ImageFormat) -> Callable[[Path, ImageConfig, str | None], Image.Image]:
    # pydicom and nibabel are imported only when a file needs them.
    if kind == "dicom":
        from cgmed.data.imaging.dicom import read_dicom

        return read_dicom
    if kind == "nifti":
        from cgmed.data.imaging.nifti import read_nifti

        return read_nifti
    from cgmed.data.imaging.raster import read_raster

    return read_raster


def _has_dicom_marker(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM"
