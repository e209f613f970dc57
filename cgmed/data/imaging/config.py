"""The ``image`` config group: how stored intensities become the 8-bit pixels a model sees.

A *window* (center C, width W) maps the stored values ``C - W/2 .. C + W/2`` linearly onto
0..255 and clips outside it, as a radiologist's viewer does. Windows are given per modality
(``windows: {CT: ct_lung}`` or ``windows: {CT: {center: -600, width: 1500}}``); without one,
high-bit-depth images are scaled between two percentiles of their own values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from cgmed.config import as_dict
from cgmed.errors import ConfigError


@dataclass(frozen=True)
class Window:
    """An intensity window in stored units (Hounsfield units for CT)."""

    center: float
    width: float

    @property
    def low(self) -> float:
        return self.center - self.width / 2

    @property
    def high(self) -> float:
        return self.center + self.width / 2


# Usual CT display windows (center / width in HU).
WINDOW_PRESETS: dict[str, Window] = {
    "ct_lung": Window(-600.0, 1500.0),
    "ct_mediastinum": Window(50.0, 350.0),
    "ct_abdomen": Window(40.0, 400.0),
    "ct_liver": Window(30.0, 150.0),
    "ct_bone": Window(400.0, 1800.0),
    "ct_brain": Window(40.0, 80.0),
}

WINDOW_FORMS = "a preset name ({}) or {{center: C, width: W}} with W > 0".format(", ".join(WINDOW_PRESETS))


@dataclass
class SliceConfig:
    """Which 2-D slice of a NIfTI volume is shown: ``axis`` of the stored voxel array, ``index``
    along it (null = the middle slice)."""

    axis: int = 2
    index: int | None = None


@dataclass
class ImageConfig:
    """``image`` config group: conversion of DICOM, NIfTI and 16/32-bit PNG/TIFF files to RGB.

    8-bit images (grayscale, RGB, palette ...) are converted exactly as ``Image.convert("RGB")``
    does; the settings below apply to everything with more than 8 bits per sample.
    """

    # modality (the record's, e.g. CT, or the DICOM's Modality tag) -> a preset name or {center, width}
    windows: Any = field(default_factory=dict)  # checked and resolved to Window values below
    # DICOM: the file's own WindowCenter/WindowWidth first (file), the configured window only
    # (config), or always the frame's minimum..maximum (minmax); without a window: minimum..maximum
    dicom_window: Literal["file", "config", "minmax"] = "file"
    dicom_frame: int | None = None  # frame of a multi-frame DICOM (null = the middle frame)
    nifti_slice: SliceConfig = field(default_factory=SliceConfig)
    # NIfTI and 16/32-bit PNG/TIFF without a window: these percentiles of the values map to 0 and 255
    percentiles: list[float] = field(default_factory=lambda: [0.5, 99.5])
    # where the processed pixels of each image are kept for every training and evaluation to read
    # (cgmed.models.processor_cache): a folder, null (off), or auto (off in cgmed-train and
    # cgmed-eval, <run directory>/processor_cache in cgmed-cg). Not a conversion setting.
    processor_cache: str | None = "auto"

    def __post_init__(self) -> None:
        if self.processor_cache is not None and (
            not isinstance(self.processor_cache, str) or not self.processor_cache.strip()
        ):
            raise ConfigError(
                "image.processor_cache",
                f"expected a folder, null or auto, got {self.processor_cache!r}",
                "e.g. image.processor_cache=/scratch/cgmed_cache (or null to turn it off)",
            )
        if isinstance(self.nifti_slice, Mapping):
            self.nifti_slice = SliceConfig(**self.nifti_slice)
        self.windows = _resolve_windows(self.windows)
        _check_percentiles(self.percentiles)
        if self.dicom_window not in ("file", "config", "minmax"):
            raise ConfigError(
                "image.dicom_window",
                f"{self.dicom_window!r} is not one of ['file', 'config', 'minmax']",
                "set image.dicom_window to file, config or minmax",
            )
        if self.dicom_frame is not None and self.dicom_frame < 0:
            raise ConfigError(
                "image.dicom_frame", f"must be >= 0, got {self.dicom_frame}", "give a frame index or null"
            )
        if self.nifti_slice.axis not in (0, 1, 2):
            raise ConfigError(
                "image.nifti_slice.axis",
                f"must be 0, 1 or 2 (a spatial axis of the volume), got {self.nifti_slice.axis}",
                "set image.nifti_slice.axis=2 for slices across the third voxel axis",
            )
        if self.nifti_slice.index is not None and self.nifti_slice.index < 0:
            raise ConfigError(
                "image.nifti_slice.index",
                f"must be >= 0, got {self.nifti_slice.index}",
                "give a slice index or null for the middle slice",
            )

    def window_for(self, *modalities: str | None) -> Window | None:
        """The configured window of the first of ``modalities`` that has one (case-insensitive)."""
        by_name = {name.casefold(): window for name, window in self.windows.items()}
        for modality in modalities:
            if modality and modality.casefold() in by_name:
                return by_name[modality.casefold()]
        return None

    def describe(self) -> dict[str, Any]:
        """The conversion settings as plain data, windows as the numbers applied (for
        ``split_meta.json``); ``processor_cache`` says where results are kept, not how images look,
        so it is left out."""
        settings = as_dict(self)
        settings.pop("processor_cache")
        return settings


def _resolve_windows(windows: Any) -> dict[str, Window]:
    if not isinstance(windows, Mapping):
        raise ConfigError(
            "image.windows",
            f"expected a mapping of modality -> window, got {windows!r}",
            f"use {WINDOW_FORMS}",
        )
    resolved: dict[str, Window] = {}
    seen: dict[str, str] = {}
    for modality, spec in windows.items():
        key = f"image.windows.{modality}"
        folded = str(modality).casefold()
        if folded in seen:
            raise ConfigError(
                key, f"repeats modality {seen[folded]!r} (names are case-insensitive)", "keep one"
            )
        seen[folded] = str(modality)
        resolved[str(modality)] = _window(spec, key)
    return resolved


def _window(spec: Any, key: str) -> Window:
    if isinstance(spec, Window):
        window = spec
    elif isinstance(spec, str):
        if spec not in WINDOW_PRESETS:
            raise ConfigError(key, f"unknown window preset {spec!r}", f"use {WINDOW_FORMS}")
        return WINDOW_PRESETS[spec]
    elif isinstance(spec, Mapping) and set(spec) == {"center", "width"}:
        center, width = spec["center"], spec["width"]
        if not all(_is_number(v) for v in (center, width)):
            raise ConfigError(
                key, f"center and width must be numbers, got {dict(spec)!r}", f"use {WINDOW_FORMS}"
            )
        window = Window(float(center), float(width))
    else:
        raise ConfigError(key, f"{spec!r} is not a window", f"use {WINDOW_FORMS}")
    if window.width <= 0:
        raise ConfigError(
            f"{key}.width", f"must be > 0, got {window.width:g}", "give the window's full width"
        )
    return window


def _check_percentiles(percentiles: Any) -> None:
    fix = "give two numbers 0 <= low < high <= 100, e.g. image.percentiles=[0.5,99.5] ([0,100] = min..max)"
    if (
        not isinstance(percentiles, (list, tuple))
        or len(percentiles) != 2
        or not all(_is_number(p) for p in percentiles)
    ):
        raise ConfigError("image.percentiles", f"expected [low, high], got {percentiles!r}", fix)
    low, high = percentiles
    if not 0 <= low < high <= 100:
        raise ConfigError("image.percentiles", f"{list(percentiles)} is not 0 <= low < high <= 100", fix)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
