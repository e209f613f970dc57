"""How an area looks: one organ outline per anatomy area, and where inside it a finding fits.

Sixteen designed outlines (Lung, Brain, Bones, ...) and a deterministic fallback blob for any
other area. ``area_shape`` measures once how far each anchor point lies from the outline, so a
finding placed there provably stays inside the organ; ``roomy_spots`` does the same for a grid
of points over the organ, where several findings of one image find room apart.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import numpy as np

from cgmed.data.record import rng_for

ShapeFn = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, "np.ndarray | None"]]


def _ell(
    u: np.ndarray, v: np.ndarray, cx: float, cy: float, rx: float, ry: float, angle: float = 0.0
) -> np.ndarray:
    du, dv = u - cx, v - cy
    if angle:
        c, s = math.cos(angle), math.sin(angle)
        du, dv = c * du + s * dv, -s * du + c * dv
    return (du / rx) ** 2 + (dv / ry) ** 2 <= 1.0


def _rect(u: np.ndarray, v: np.ndarray, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return (u >= x0) & (u <= x1) & (v >= y0) & (v <= y1)


def _polar(u: np.ndarray, v: np.ndarray, cx: float, cy: float) -> tuple[np.ndarray, np.ndarray]:
    return np.sqrt((u - cx) ** 2 + (v - cy) ** 2), np.arctan2(v - cy, u - cx)


def _lung(u, v):
    return _ell(u, v, 0.31, 0.5, 0.165, 0.35) | _ell(u, v, 0.69, 0.5, 0.165, 0.35), None


def _brain(u, v):
    r, th = _polar(u, v, 0.5, 0.5)
    mask = r <= 0.36 * (1.0 + 0.05 * np.sin(9 * th))
    folds = mask & (np.abs(np.sin(5 * th + 22 * r)) < 0.18)  # gyri: darker curved lines
    return mask, np.where(folds, 0.78, 1.0)


def _bones(u, v):
    upper = _rect(u, v, 0.34, 0.0, 0.66, 0.44) | _ell(u, v, 0.5, 0.42, 0.23, 0.06)
    lower = _rect(u, v, 0.35, 0.56, 0.65, 1.0) | _ell(u, v, 0.5, 0.585, 0.22, 0.05)
    return upper | lower, None


def _kidney(u, v):
    left = _ell(u, v, 0.27, 0.52, 0.19, 0.29) & ~_ell(u, v, 0.46, 0.52, 0.06, 0.08)
    right = _ell(u, v, 0.73, 0.52, 0.19, 0.29) & ~_ell(u, v, 0.54, 0.52, 0.06, 0.08)
    return left | right, None


def _cervix(u, v):
    # a wide oval with the external os as a dark slit in its middle
    return _ell(u, v, 0.5, 0.5, 0.45, 0.33) & ~_ell(u, v, 0.5, 0.5, 0.07, 0.035), None


def _intestine_centre(u):
    return 0.5 + 0.12 * np.sin(2 * np.pi * 1.2 * (u - 0.1))


def _intestine(u, v):
    d = np.abs(v - _intestine_centre(u))
    mask = (d < 0.19) & (u > 0.03) & (u < 0.97)
    haustra = mask & (np.abs(np.sin(2 * np.pi * 9 * u)) < 0.15)  # folds across the tube
    return mask, np.where(haustra, 0.8, 1.0)


def _bladder(u, v):
    return _ell(u, v, 0.5, 0.6, 0.35, 0.28) & (v >= 0.4), None


def _fundus(u, v):
    mask = _ell(u, v, 0.5, 0.5, 0.45, 0.45)
    shade = np.where(_ell(u, v, 0.72, 0.5, 0.075, 0.075), 1.2, 1.0)  # optic disc
    r, _ = _polar(u, v, 0.9, 0.5)
    vessels = mask & (np.abs(r - 0.42) < 0.013)
    return mask, np.where(vessels, 0.7, shade)


def _retina_top(u):
    return 0.36 + 0.04 * np.sin(2 * np.pi * u) - 0.06 * np.exp(-(((u - 0.5) / 0.08) ** 2))


def _retina(u, v):
    top = _retina_top(u)
    mask = (v >= top) & (v <= top + 0.34)
    layers = mask & (np.abs(np.sin(2 * np.pi * (v - top) / 0.08)) < 0.12)
    return mask, np.where(layers, 0.82, 1.0)


def _breast(u, v):
    return _ell(u, v, 0.0, 0.5, 0.66, 0.42), None


def _chest(u, v):
    # a trunk: wide body with rounded shoulders reaching the bottom edge, and a neck
    body = _rect(u, v, 0.06, 0.34, 0.94, 1.0) | _rect(u, v, 0.2, 0.2, 0.8, 1.0)
    shoulders = _ell(u, v, 0.2, 0.34, 0.14, 0.14) | _ell(u, v, 0.8, 0.34, 0.14, 0.14)
    mask = body | shoulders | _rect(u, v, 0.4, 0.0, 0.6, 0.2)
    ribs = mask & (np.sin(2 * np.pi * 7 * v) > 0.75)
    return mask, np.where(ribs, 0.78, 1.0)


def _skin(u, v):
    return v >= 0.32 + 0.05 * np.sin(2 * np.pi * 2 * u), None


def _mouth(u, v):
    r, th = _polar(u, v, 0.5, 0.3)
    mask = (r >= 0.15) & (r <= 0.45) & (v >= 0.3)
    gaps = mask & (np.abs(np.sin(7 * th)) < 0.1)  # darker lines between teeth
    return mask, np.where(gaps, 0.72, 1.0)


def _cell(u, v):
    mask = _ell(u, v, 0.48, 0.5, 0.25, 0.23)
    for cx, cy in ((0.13, 0.14), (0.86, 0.18), (0.16, 0.86), (0.85, 0.84)):
        mask = mask | _ell(u, v, cx, cy, 0.07, 0.07)
    return mask, None


def _thyroid(u, v):
    lobes = _ell(u, v, 0.31, 0.46, 0.16, 0.29, 0.35) | _ell(u, v, 0.69, 0.46, 0.16, 0.29, -0.35)
    return lobes | _rect(u, v, 0.36, 0.56, 0.64, 0.68), None


def _liver(u, v):
    return _ell(u, v, 0.42, 0.47, 0.36, 0.28) | _ell(u, v, 0.7, 0.38, 0.22, 0.14), None


# area -> (shape in canonical unit-square coordinates, anchor points where findings may go)
_AREAS: dict[str, tuple[ShapeFn, list[tuple[float, float]]]] = {
    "Lung": (_lung, [(0.31, 0.42), (0.31, 0.58), (0.69, 0.42), (0.69, 0.58)]),
    "Brain": (_brain, [(0.5, 0.5), (0.4, 0.44), (0.6, 0.56), (0.44, 0.6), (0.58, 0.4)]),
    "Bones": (_bones, [(0.5, 0.2), (0.5, 0.3), (0.5, 0.72), (0.5, 0.8)]),
    "Kidney": (_kidney, [(0.25, 0.44), (0.25, 0.6), (0.75, 0.44), (0.75, 0.6)]),
    "Cervix": (_cervix, [(0.28, 0.5), (0.72, 0.5)]),
    "Intestine": (_intestine, [(0.2, 0.0), (0.4, 0.0), (0.6, 0.0), (0.8, 0.0)]),
    "Bladder": (_bladder, [(0.5, 0.62), (0.38, 0.62), (0.62, 0.62)]),
    "Fundus": (_fundus, [(0.4, 0.5), (0.4, 0.34), (0.4, 0.66), (0.28, 0.5)]),
    "Retina": (_retina, [(0.2, 0.0), (0.3, 0.0), (0.7, 0.0), (0.8, 0.0)]),
    "Breast": (_breast, [(0.22, 0.5), (0.28, 0.4), (0.28, 0.6)]),
    "Chest": (_chest, [(0.3, 0.5), (0.7, 0.5), (0.3, 0.75), (0.7, 0.75), (0.5, 0.6)]),
    "Skin": (_skin, [(0.3, 0.65), (0.5, 0.62), (0.7, 0.65), (0.5, 0.78)]),
    "Mouth": (_mouth, [(0.25, 0.47), (0.5, 0.6), (0.75, 0.47), (0.35, 0.56), (0.65, 0.56)]),
    "Cell": (_cell, [(0.48, 0.5), (0.42, 0.52), (0.54, 0.46)]),
    "Thyroid": (_thyroid, [(0.31, 0.44), (0.69, 0.44), (0.32, 0.5), (0.68, 0.5)]),
    "Liver": (_liver, [(0.32, 0.47), (0.44, 0.45), (0.42, 0.55)]),
}
# Band-shaped organs put their anchors on the band's centre line (y given as 0.0 above).
_CENTRE_LINES: dict[str, Callable[[float], float]] = {
    "Intestine": lambda u: float(_intestine_centre(np.float64(u))),
    "Retina": lambda u: float(_retina_top(np.float64(u))) + 0.17,
}


def _fallback_area(area: str) -> tuple[ShapeFn, list[tuple[float, float]]]:
    """A deterministic blob of two or three ellipses for an area without a designed outline."""
    rng = rng_for("synth-area", area)
    parts = [
        (
            rng.uniform(0.3, 0.7),
            rng.uniform(0.3, 0.7),
            rng.uniform(0.17, 0.3),
            rng.uniform(0.17, 0.3),
            rng.uniform(0, 3),
        )
        for _ in range(rng.choice((2, 3)))
    ]

    def shape(u, v):
        mask = _ell(u, v, *parts[0])
        for p in parts[1:]:
            mask = mask | _ell(u, v, *p)
        return mask, None

    return shape, [(p[0], p[1]) for p in parts]


@dataclass(frozen=True)
class AreaShape:
    """An organ outline in canonical coordinates and where a finding of what radius fits."""

    shape: ShapeFn
    anchors: tuple[tuple[float, float, float], ...]  # (x, y, clearance): disc of that radius lies inside


@cache
def area_shape(area: str) -> AreaShape:
    """The area's outline and its anchors, with each anchor's clearance measured once.

    Clearance (distance to the nearest point outside the organ) is measured on a fine grid,
    so that any finding whose extent is below it provably stays inside the organ.
    """
    fn, points = _AREAS.get(area) or _fallback_area(area)
    line = _CENTRE_LINES.get(area)
    if line is not None:
        points = [(x, line(x)) for x, _ in points]
    n = 360
    c = np.linspace(-0.25, 1.25, n)
    u, v = np.meshgrid(c, c)
    mask, _ = fn(u, v)
    outside = np.stack([u[~mask], v[~mask]], axis=1)
    anchors = []
    for x, y in points:
        clear = float(np.sqrt(((outside - (x, y)) ** 2).sum(axis=1)).min()) if len(outside) else 0.5
        anchors.append((x, y, clear - 1.5 / n * 1.5))  # minus the grid's own error
    return AreaShape(fn, tuple(anchors))


_SPOT_STEP = 0.025  # spacing of the candidate points of roomy_spots (unit-square units)


@cache
def roomy_spots(area: str) -> tuple[tuple[float, float, float], ...]:
    """Points of a regular grid inside the organ, each with its clearance: ``(x, y, clearance)``.

    Clearance is the distance to the nearest point outside the organ or outside the image, so a
    finding whose extent is below it stays inside both. Where ``area_shape``'s few anchors hold
    one finding, these points let several findings of one image sit apart from each other.
    """
    fn, _ = _AREAS.get(area) or _fallback_area(area)
    n = 360
    c = np.linspace(-0.25, 1.25, n)
    u, v = np.meshgrid(c, c)
    organ, _ = fn(u, v)
    organ = organ & (u >= 0) & (u <= 1) & (v >= 0) & (v <= 1)
    # The outside point nearest to an inside point has an inside neighbour: those suffice.
    beside = np.zeros_like(organ)
    beside[1:] |= organ[:-1]
    beside[:-1] |= organ[1:]
    beside[:, 1:] |= organ[:, :-1]
    beside[:, :-1] |= organ[:, 1:]
    edge = np.stack([u[beside & ~organ], v[beside & ~organ]], axis=1)
    g = np.arange(1, round(1 / _SPOT_STEP)) * _SPOT_STEP  # inner points only: 0 and 1 are edges
    gu, gv = np.meshgrid(g, g)
    inside, _ = fn(gu, gv)
    points = np.stack([gu[inside], gv[inside]], axis=1)
    spots = []
    for x, y in points:
        clear = float(np.sqrt(((edge - (x, y)) ** 2).sum(axis=1)).min())
        clear -= 1.5 / n * 1.5  # the grid's own error
        if clear > 0:
            spots.append((round(float(x), 6), round(float(y), 6), clear))
    return tuple(spots)
