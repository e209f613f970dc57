"""Drawing one image: organ, texture and finding composed into pixels, and the finding's box.

``render`` draws a classification image of a label, ``render_detection`` an image of a finding
with its ground-truth box (``box_from_mask``). Draws happen in a fixed order so that images that
differ in one factor share everything else.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from cgmed.data.synth.anatomy import AreaShape, area_shape
from cgmed.data.synth.findings import Finding, finding_for, finding_mask, finding_params
from cgmed.data.synth.looks import palette, pixel_grid, texture

_MARGIN = 0.004  # extra clearance (unit-square units) on top of the measured one


def _place(
    finding: Finding, shape: AreaShape, rng: random.Random, size: int, sc: float, tx: float, ty: float
) -> tuple[dict[str, float], float, float, float, float]:
    """Size and centre of a finding: (params, cx, cy, extent, room).

    Picks an anchor whose clearance (``room``, after the organ's scale jitter) holds the
    finding's extent and jitters the centre within the spare room, so the finding lies inside
    the organ wherever it lands.
    """
    # Four draws, always, so the RNG's later state never depends on the area.
    k, pick, spread, angle = rng.uniform(0.9, 1.1), rng.random(), rng.random(), rng.uniform(0, 2 * math.pi)
    params, extent = finding_params(finding, k, size)
    room = [(ax, ay, c * sc - _MARGIN) for ax, ay, c in shape.anchors]
    fits = [a for a in room if a[2] >= extent]
    if not fits:
        # No anchor is roomy enough (a narrow organ): shrink the finding into the roomiest one.
        best = max(room, key=lambda a: a[2])
        k *= max(best[2], 0.01) / extent
        params, extent = finding_params(finding, k, size)
        fits = [best]
    ax, ay, c = fits[min(int(pick * len(fits)), len(fits) - 1)]
    slack = min(max(c - extent, 0.0), 0.12)
    dist = slack * math.sqrt(spread)  # uniform over the disc of spare room
    cx = (ax - 0.5) * sc + 0.5 + tx + dist * math.cos(angle)
    cy = (ay - 0.5) * sc + 0.5 + ty + dist * math.sin(angle)
    return params, cx, cy, extent, c


def render(
    modality: str,
    area: str,
    task: str,
    label: str,
    rng: random.Random,
    size: int,
    labels: Sequence[str] | None = None,
) -> Image.Image:
    """One RGB image of ``label`` in a ``modality`` ``area`` ``task`` subset.

    Random draws happen in a fixed order (organ jitter, texture seed, then the finding), so
    with equal RNG states a Normal and a non-Normal image share organ and texture, and two
    modalities or two labels share the geometry: only the intended factor changes.
    ``labels`` (the task's label list) keeps labels of one task apart, see ``finding_for``.
    From 32 px up every finding fits inside its organ whole; below that, pixel floors that
    keep thin parts visible can make it larger than the organ allows, and it is clipped.
    """
    return _draw(modality, area, finding_for(task, label, labels), rng, size)[0]


def render_detection(
    modality: str, area: str, finding: Finding, rng: random.Random, size: int
) -> tuple[Image.Image, list[int]]:
    """One image with ``finding`` drawn, and the finding's box on the 0-100 grid (``box_from_mask``).

    Same draws as ``render``, so a detection image equals the classification image of the
    label with that look under the same RNG state.
    """
    img, fmask = _draw(modality, area, finding, rng, size)
    return img, box_from_mask(fmask)


def box_from_mask(mask: np.ndarray) -> list[int]:
    """``[x1, y1, x2, y2]`` on a 0-100 grid enclosing every True pixel of ``mask`` (rows = y).

    The box is the mask's outermost extent in pixel edges (left edge of the leftmost pixel to
    right edge of the rightmost), scaled by 100 / size, rounded outwards (floor for x1/y1, ceil
    for x2/y2) so it never cuts a pixel off. Raises ValueError for an empty mask.
    """
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        raise ValueError("the finding mask is empty: nothing to box")
    h, w = mask.shape
    # Integer arithmetic: float rounding must not push an exact edge (e.g. 32 px -> 50.0) up by one.
    return [
        (int(xs.min()) * 100) // w,
        (int(ys.min()) * 100) // h,
        -((-(int(xs.max()) + 1) * 100) // w),
        -((-(int(ys.max()) + 1) * 100) // h),
    ]


def _draw(
    modality: str, area: str, finding: Finding | None, rng: random.Random, size: int
) -> tuple[Image.Image, np.ndarray | None]:
    """The image and the finding's pixel mask (None without a finding)."""
    tx, ty = rng.uniform(-0.04, 0.04), rng.uniform(-0.04, 0.04)
    sc = rng.uniform(0.94, 1.06)
    tex_rng = np.random.default_rng(rng.getrandbits(64))

    x, y = pixel_grid(size)
    shape = area_shape(area)
    mask, shade = shape.shape((x - 0.5 - tx) / sc + 0.5, (y - 0.5 - ty) / sc + 0.5)
    pal = palette(modality)
    organ = np.asarray(pal.organ, dtype=np.float32)
    organ_px = organ if shade is None else organ * shade[..., None].astype(np.float32)  # folds, ribs
    img = np.where(mask[..., None], organ_px, np.asarray(pal.background, dtype=np.float32))
    gain, noise = texture(pal, size, tex_rng)
    img = img * gain + noise

    fmask = None
    if finding is not None:
        # A little brightness jitter, identical across modalities and areas (drawn first).
        brightness = rng.uniform(0.9, 1.0)
        params, cx, cy = _place(finding, shape, rng, size, sc, tx, ty)[:3]
        # The placement keeps the finding inside the organ; the clip only guards rounding, so
        # a finding can never land on the background where it might not stand out.
        fmask = finding_mask(finding, params, x, y, cx, cy) & mask
        img[fmask] = np.asarray(finding.colour, dtype=np.float32) * brightness
    return Image.fromarray(np.clip(img + 0.5, 0, 255).astype(np.uint8), "RGB"), fmask


def save_png(img: Image.Image, path: Path) -> None:
    """Write ``img`` to ``path`` as PNG, the same bytes for the same pixels."""
    # Fixed zlib level and no text/time chunks: equal pixels give equal bytes.
    img.save(path, format="PNG", compress_level=6, optimize=False)
