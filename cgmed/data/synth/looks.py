"""How a modality looks: its palette (background and organ colour) and its texture.

Also the finding colours, chosen here against the palettes: every finding colour stands out
from every organ colour by at least ``MIN_CONTRAST``.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache, lru_cache

import numpy as np

from cgmed.data.record import rng_for

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class Palette:
    """How a modality renders: background and organ colour, texture kind and noise strength."""

    background: RGB
    organ: RGB
    texture: str  # smooth | rings | speckle | grain | vignette | streaks
    noise: float  # std of per-pixel grey noise, in 0-255 units


PALETTES: dict[str, Palette] = {
    "CT": Palette((12, 12, 14), (150, 150, 150), "smooth", 3.0),
    "MRI": Palette((10, 12, 48), (95, 125, 240), "rings", 5.0),
    "X-ray": Palette((48, 48, 48), (225, 225, 225), "grain", 6.0),  # radiograph: bright bone on dark
    "US": Palette((6, 6, 6), (165, 150, 125), "speckle", 4.0),
    "Co": Palette((95, 30, 40), (235, 165, 175), "vignette", 4.0),
    "Der": Palette((230, 195, 170), (140, 85, 60), "vignette", 4.0),
    "DP": Palette((45, 65, 92), (235, 210, 190), "smooth", 4.0),
    "End": Palette((72, 18, 12), (215, 110, 100), "vignette", 5.0),
    "FP": Palette((0, 0, 0), (205, 95, 35), "vignette", 3.0),
    "Mic": Palette((240, 230, 245), (150, 80, 175), "grain", 7.0),
    "OCT": Palette((8, 8, 8), (175, 215, 175), "streaks", 6.0),
}
_TEXTURES = ("smooth", "rings", "speckle", "grain", "vignette", "streaks")

# Finding colours are saturated primaries/secondaries, far from every organ colour above
# (measured on the tiny model: a finding that does not stand out from the organ is never learned).
YELLOW: RGB = (255, 235, 0)
CYAN: RGB = (0, 235, 255)
MAGENTA: RGB = (255, 0, 230)
GREEN: RGB = (40, 255, 40)
FINDING_COLOURS: tuple[RGB, ...] = (YELLOW, CYAN, MAGENTA, GREEN)
MIN_CONTRAST = 120.0  # least RGB distance between an organ colour and any finding colour


def _distance(a: Sequence[float], b: Sequence[float]) -> float:
    return math.dist(a, b)


@cache
def palette(modality: str) -> Palette:
    """The modality's palette; unknown names get a deterministic one derived from the name."""
    if modality in PALETTES:
        return PALETTES[modality]
    rng = rng_for("synth-palette", modality)
    for _ in range(1000):
        hue = rng.random()
        organ = colorsys.hsv_to_rgb(hue, rng.uniform(0.2, 0.55), rng.uniform(0.55, 0.8))
        organ_rgb = tuple(int(round(c * 255)) for c in organ)
        if min(_distance(organ_rgb, f) for f in FINDING_COLOURS) >= MIN_CONTRAST:
            break
    bg = colorsys.hsv_to_rgb(
        (hue + rng.uniform(0.3, 0.7)) % 1.0, rng.uniform(0.3, 0.8), rng.uniform(0.04, 0.22)
    )
    return Palette(
        tuple(int(round(c * 255)) for c in bg),  # type: ignore[arg-type]
        organ_rgb,  # type: ignore[arg-type]
        rng.choice(_TEXTURES),
        rng.uniform(3.0, 7.0),
    )


@lru_cache(maxsize=16)
def pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates on the unit square (x to the right, y down)."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    return np.broadcast_to(c[None, :], (size, size)), np.broadcast_to(c[:, None], (size, size))


@lru_cache(maxsize=16)
def _radius(size: int) -> np.ndarray:
    x, y = pixel_grid(size)
    return np.sqrt((x - 0.5) ** 2 + (y - 0.5) ** 2)


def texture(pal: Palette, size: int, rng: np.random.Generator) -> tuple[np.ndarray | float, np.ndarray]:
    """(gain, additive noise) for one image; gain multiplies colours, noise is grey."""
    noise = rng.standard_normal((size, size, 1), dtype=np.float32) * pal.noise
    pattern = pal.texture
    if pattern == "rings":  # MRI: concentric ring artefact, random phase
        phase = rng.random()
        gain = 1.0 + 0.12 * np.cos(2 * np.pi * (_radius(size) * 7.0 + phase))
        return gain[..., None], noise
    if pattern == "speckle":  # ultrasound: multiplicative speckle
        return 1.0 + 0.22 * rng.standard_normal((size, size, 1), dtype=np.float32), noise
    if pattern == "grain":
        return 1.0, noise * 1.6
    if pattern == "vignette":  # circular light fall-off of scopes and cameras
        return (1.0 - 0.9 * _radius(size) ** 2)[..., None], noise
    if pattern == "streaks":  # OCT: horizontal line noise (one gain per row)
        return 1.0 + 0.08 * rng.standard_normal((size, 1, 1), dtype=np.float32), noise
    return 1.0, noise
