"""Drawing one image: organ, texture and findings composed into pixels, and a finding's box.

``render`` draws a classification image of a label, ``render_findings`` one of a label set
(several findings apart in one organ), ``render_detection`` an image of a finding with its
ground-truth box (``box_from_mask``). Draws happen in a fixed order so that images that differ
in one factor share everything else.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from cgmed.data.synth.anatomy import AreaShape, area_shape, roomy_spots
from cgmed.data.synth.findings import Finding, finding_for, finding_mask, finding_params
from cgmed.data.synth.looks import palette, pixel_grid, texture

_MARGIN = 0.004  # extra clearance (unit-square units) on top of the measured one
_SCALE = (0.9, 1.1)  # size jitter of a finding, alone or in a label set
_SHRINKS = (1.0, 0.85, 0.7, 0.55, 0.4)  # tried in turn when the findings of a set do not fit apart


def _place(
    finding: Finding, shape: AreaShape, rng: random.Random, size: int, sc: float, tx: float, ty: float
) -> tuple[dict[str, float], float, float, float, float]:
    """Size and centre of a finding: (params, cx, cy, extent, room).

    Picks an anchor whose clearance (``room``, after the organ's scale jitter) holds the
    finding's extent and jitters the centre within the spare room, so the finding lies inside
    the organ wherever it lands.
    """
    # Four draws, always, so the RNG's later state never depends on the area.
    k, pick, spread, angle = rng.uniform(*_SCALE), rng.random(), rng.random(), rng.uniform(0, 2 * math.pi)
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


@dataclass
class _Canvas:
    """An organ drawn on its background (float pixels), and what placing findings on it needs."""

    pixels: np.ndarray  # size x size x 3, float32
    organ: np.ndarray  # size x size, True inside the organ
    shape: AreaShape
    scale: float  # the organ's scale jitter
    tx: float  # and its shift
    ty: float
    x: np.ndarray  # pixel-centre coordinates (pixel_grid)
    y: np.ndarray


def _canvas(modality: str, area: str, rng: random.Random, size: int) -> _Canvas:
    """The organ of ``area`` in ``modality``'s colours and texture, jittered by ``rng``."""
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
    return _Canvas(img * gain + noise, mask, shape, sc, tx, ty, x, y)


def _paint(
    canvas: _Canvas, finding: Finding, params: dict[str, float], cx: float, cy: float, brightness: float
) -> np.ndarray:
    """Draw ``finding`` centred on (cx, cy); its pixel mask."""
    # The placement keeps the finding inside the organ; the clip only guards rounding, so
    # a finding can never land on the background where it might not stand out.
    fmask = finding_mask(finding, params, canvas.x, canvas.y, cx, cy) & canvas.organ
    canvas.pixels[fmask] = np.asarray(finding.colour, dtype=np.float32) * brightness
    return fmask


def _to_image(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8), "RGB")


def _draw(
    modality: str, area: str, finding: Finding | None, rng: random.Random, size: int
) -> tuple[Image.Image, np.ndarray | None]:
    """The image and the finding's pixel mask (None without a finding)."""
    canvas = _canvas(modality, area, rng, size)
    fmask = None
    if finding is not None:
        # A little brightness jitter, identical across modalities and areas (drawn first).
        brightness = rng.uniform(0.9, 1.0)
        params, cx, cy = _place(finding, canvas.shape, rng, size, canvas.scale, canvas.tx, canvas.ty)[:3]
        fmask = _paint(canvas, finding, params, cx, cy, brightness)
    return _to_image(canvas.pixels), fmask


def render_findings(
    modality: str, area: str, findings: Sequence[Finding], rng: random.Random, size: int
) -> tuple[Image.Image, list[np.ndarray]]:
    """One image showing every finding of ``findings`` (a label set), and each finding's pixel mask.

    The organ draws as in ``render``; then each finding, at the size of a lone one (shrunk only
    where two do not fit apart), lies inside the organ at least two pixels away from the
    others, so every finding of the set stays whole and keeps its own look. No findings draws
    the organ alone (Normal).
    Raises ValueError when the findings do not fit apart (not for the designed outlines at 32
    px or more).
    """
    canvas = _canvas(modality, area, rng, size)
    brightness = [rng.uniform(0.9, 1.0) for _ in findings]
    spots = _place_apart(findings, area, rng, size, canvas)
    masks = [
        _paint(canvas, finding, params, cx, cy, bright)
        for finding, bright, (params, cx, cy) in zip(findings, brightness, spots, strict=True)
    ]
    return _to_image(canvas.pixels), masks


def _place_apart(
    findings: Sequence[Finding], area: str, rng: random.Random, size: int, canvas: _Canvas
) -> list[tuple[dict[str, float], float, float]]:
    """Sizes and centres ``(params, cx, cy)`` of the findings of one image, inside the organ and apart.

    Each finding takes a point of ``roomy_spots`` (``_pick_spots``); when the findings do not
    fit apart, every finding shrinks and the same draws are tried again.
    """
    draws = [(rng.uniform(*_SCALE), rng.random()) for _ in findings]  # always two per finding
    spots = np.asarray(roomy_spots(area), dtype=np.float64)
    sc = canvas.scale
    xy, room = spots[:, :2] * sc, spots[:, 2] * sc - _MARGIN  # distances as drawn, after the jitter
    for shrink in _SHRINKS:
        sized = [finding_params(f, k * shrink, size) for f, (k, _) in zip(findings, draws, strict=True)]
        extents = [extent for _, extent in sized]
        taken = _pick_spots(extents, [pick for _, pick in draws], xy, room, gap=2.0 / size)
        if taken is not None:
            return [
                (
                    params,
                    (spots[j, 0] - 0.5) * sc + 0.5 + canvas.tx,
                    (spots[j, 1] - 0.5) * sc + 0.5 + canvas.ty,
                )
                for (params, _), j in zip(sized, taken, strict=True)
            ]
    raise ValueError(f"{len(findings)} findings do not fit apart in the {area} outline at {size} px")


def _pick_spots(
    extents: Sequence[float], picks: Sequence[float], xy: np.ndarray, room: np.ndarray, gap: float
) -> list[int] | None:
    """The spot each finding takes (indices into ``xy``), or None when they do not fit apart.

    A finding's spot has ``room`` for its extent, keeps ``gap`` to the findings placed before
    it and leaves the next finding a spot of its own; ``picks`` (in [0, 1)) choose among the
    spots that qualify.
    """
    taken: list[int] = []
    for i, (extent, pick) in enumerate(zip(extents, picks, strict=True)):
        fits = room >= extent
        for placed_extent, j in zip(extents[: len(taken)], taken, strict=True):
            fits &= np.linalg.norm(xy - xy[j], axis=1) >= extent + placed_extent + gap
        candidates = np.flatnonzero(fits)
        if i + 1 < len(extents) and len(candidates):
            after = extents[i + 1]
            apart = np.linalg.norm(xy[candidates, None] - xy[None, room >= after], axis=-1)
            candidates = candidates[(apart >= extent + after + gap).any(axis=1)]
        if not len(candidates):
            return None
        taken.append(int(candidates[min(int(pick * len(candidates)), len(candidates) - 1)]))
    return taken


def save_png(img: Image.Image, path: Path) -> None:
    """Write ``img`` to ``path`` as PNG, the same bytes for the same pixels."""
    # Fixed zlib level and no text/time chunks: equal pixels give equal bytes.
    img.save(path, format="PNG", compress_level=6, optimize=False)
