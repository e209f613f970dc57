"""DICOM files (pydicom) -> RGB: one frame, rescaled to stored units, windowed, MONOCHROME1 inverted.

Grayscale frames go through the modality transform (RescaleSlope/RescaleIntercept or a Modality
LUT: Hounsfield units for CT) and then a window: the file's own WindowCenter/WindowWidth (the first
pair when several are given), the configured window of the modality, or the frame's
minimum..maximum, as ``image.dicom_window`` orders. Enhanced multi-frame files keep these values
in their functional groups; the frame's own group wins over the shared one. Color files (RGB, YBR
converted by pydicom, PALETTE COLOR through its lookup table) are shown as stored. A VOI LUT
Sequence (a lookup table in place of a window) and a non-linear VOI LUT Function are not applied:
such files are shown through the configured window or their minimum..maximum.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pydicom.pixels
from PIL import Image
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from cgmed.data.imaging.config import ImageConfig, Window
from cgmed.data.imaging.pixels import check_pixel_count, color_image, gray_image, minmax_range, window_range
from cgmed.errors import BadImageError

PIXEL_DATA_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
DECODER_FIX = (
    "install a decoder pydicom names above (e.g. pip install pylibjpeg pylibjpeg-libjpeg "
    "pylibjpeg-openjpeg, or pip install pyjpegls), or export the file uncompressed"
)


def read_dicom(path: Path, cfg: ImageConfig, modality: str | None = None) -> Image.Image:
    """One frame of a DICOM file as the RGB image a model sees (see the module docstring)."""
    where = str(path)
    dataset = _read_dataset(path)
    if not any(tag in dataset for tag in PIXEL_DATA_TAGS):
        kind = getattr(dataset.get("SOPClassUID"), "name", None) or "unknown SOP class"
        raise BadImageError(
            where, f"DICOM file holds no pixel data ({kind})", "leave non-image DICOM objects out of the data"
        )
    check_pixel_count(where, (int(dataset.get("Rows", 0)), int(dataset.get("Columns", 0))))
    frame = _frame_index(dataset, cfg, where)
    pixels = _decode(dataset, frame, where)
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).strip()
    if photometric == "PALETTE COLOR":
        rgb = pydicom.pixels.apply_color_lut(pixels, dataset)
        lut_bits = 8 if rgb.dtype == np.uint8 else int(dataset.RedPaletteColorLookupTableDescriptor[2])
        return color_image(rgb, lut_bits)
    if pixels.ndim == 3:  # samples per pixel = 3, already RGB (pydicom converts YBR)
        return color_image(pixels, int(dataset.get("BitsStored", 8)))
    values = _modality_values(dataset, pixels, frame)
    window = _window(dataset, frame, cfg, modality)
    low, high = window_range(window) if window else minmax_range(values)
    return gray_image(values, low, high, invert=photometric == "MONOCHROME1")


def _read_dataset(path: Path) -> Any:
    """The file's dataset; a file without the 128-byte preamble and file meta header (older
    exports, ACR-NEMA style) is read again without that check when it holds pixel data."""
    try:
        dataset = pydicom.dcmread(path)
    except InvalidDicomError:
        try:
            dataset = pydicom.dcmread(path, force=True)
        except Exception:
            dataset = None
        if dataset is None or not any(tag in dataset for tag in PIXEL_DATA_TAGS):
            raise
    if "TransferSyntaxUID" not in dataset.file_meta:
        # Without a header the syntax is the encoding pydicom recognised in the elements.
        implicit_vr, little_endian = dataset.original_encoding
        dataset.file_meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian
            if implicit_vr
            else (ExplicitVRLittleEndian if little_endian else ExplicitVRBigEndian)
        )
    return dataset


def _frame_index(dataset: Any, cfg: ImageConfig, where: str) -> int | None:
    """The frame to show of a multi-frame file (None for a single frame)."""
    frames = int(dataset.get("NumberOfFrames") or 1)
    if frames <= 1:  # image.dicom_frame concerns multi-frame files only
        return None
    index = frames // 2 if cfg.dicom_frame is None else cfg.dicom_frame
    if index >= frames:
        raise BadImageError(
            where,
            f"frame {index} does not exist: the file has {frames} frame(s), valid 0..{frames - 1}",
            "set image.dicom_frame to a valid frame, or null for the middle frame",
        )
    return index


def _decode(dataset: Any, frame: int | None, where: str) -> np.ndarray:
    """The frame's pixels (YBR converted to RGB); a compressed file without a decoder is refused
    with pydicom's account of the plugins it tried."""
    file_meta = getattr(dataset, "file_meta", None)
    syntax = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    try:
        return pydicom.pixels.pixel_array(dataset, index=frame)
    except Exception as err:  # pydicom raises RuntimeError/ValueError/NotImplementedError by cause
        if syntax is not None and syntax.is_compressed:
            raise BadImageError(
                where,
                f"pixel data compressed as {syntax.name} ({syntax}) cannot be decoded here: {err}",
                DECODER_FIX,
            ) from None
        raise BadImageError(
            where, f"cannot decode the DICOM pixel data: {err}", "re-export or drop this image"
        ) from None


def _functional_group(dataset: Any, frame: int | None, sequence: str) -> Any:
    """The item of an enhanced multi-frame file's ``sequence`` that applies to ``frame``: the
    frame's own functional group first, then the shared one; None when neither has it."""
    for groups, position in (
        ("PerFrameFunctionalGroupsSequence", frame or 0),
        ("SharedFunctionalGroupsSequence", 0),
    ):
        items = dataset.get(groups)
        if items and position < len(items):
            inner = items[position].get(sequence)
            if inner:
                return inner[0]
    return None


def _modality_values(dataset: Any, pixels: np.ndarray, frame: int | None) -> np.ndarray:
    """Stored pixels -> values in the modality's units (HU for CT)."""
    if "ModalityLUTSequence" in dataset:
        return pydicom.pixels.apply_modality_lut(pixels, dataset).astype(np.float64)
    source = dataset
    if "RescaleSlope" not in dataset and "RescaleIntercept" not in dataset:
        source = _functional_group(dataset, frame, "PixelValueTransformationSequence") or dataset
    slope = float(source.get("RescaleSlope") or 1.0)
    intercept = float(source.get("RescaleIntercept") or 0.0)
    return pixels.astype(np.float64) * slope + intercept


def _window(dataset: Any, frame: int | None, cfg: ImageConfig, modality: str | None) -> Window | None:
    """The window ``image.dicom_window`` picks, or None for the frame's minimum..maximum."""
    if cfg.dicom_window == "minmax":
        return None
    if cfg.dicom_window == "file":
        own = _file_window(dataset, frame)
        if own is not None:
            return own
    return cfg.window_for(modality, str(dataset.get("Modality") or ""))


def _file_window(dataset: Any, frame: int | None) -> Window | None:
    """The file's own WindowCenter/WindowWidth (the first pair of several); None when absent or
    unusable (a width <= 0)."""
    source = dataset
    if "WindowCenter" not in dataset or "WindowWidth" not in dataset:
        source = _functional_group(dataset, frame, "FrameVOILUTSequence")
        if source is None:
            return None
    center, width = _first(source.get("WindowCenter")), _first(source.get("WindowWidth"))
    if center is None or width is None or width <= 0:
        return None
    return Window(center, width)


def _first(value: Any) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple, MultiValue)):
        return float(value[0]) if len(value) else None
    return float(value)
