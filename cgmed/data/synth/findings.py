"""What a label draws: the finding, its shape and colour, per task and label.

A task fixes the family of findings (masses, lesions, dot counts, shapes) and each label of the
task one variant; some labels (Tumor, Cyst, Stone, Fracture) have a designed look they keep in
every task. ``Normal`` draws nothing. Also the finding's size at a given scale and its pixel mask.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cgmed.data.record import stable_int
from cgmed.data.synth.looks import CYAN, FINDING_COLOURS, GREEN, MAGENTA, RGB, YELLOW
from cgmed.data.vocab import DETECTION_TASK


@dataclass(frozen=True)
class Finding:
    """What a label draws: a shape kind, its colour, and for ``dots`` how many."""

    kind: str  # disc | small_disc | ring | square | cross | triangle | diamond | bar | dots
    colour: RGB
    count: int = 1


KINDS = ("disc", "ring", "square", "cross", "triangle", "diamond", "bar", "small_disc")
_FAMILY_ORDER: dict[str, list[tuple[str, RGB]]] = {
    # masses: diagnosis of a diseased state (Cancer, State, COVID)
    "mass": [
        ("disc", YELLOW),
        ("ring", CYAN),
        ("triangle", MAGENTA),
        ("cross", GREEN),
        ("square", MAGENTA),
        ("diamond", CYAN),
        ("bar", GREEN),
        ("small_disc", MAGENTA),
    ],
    # lesions: which disease
    "lesion": [
        ("ring", CYAN),
        ("square", MAGENTA),
        ("disc", YELLOW),
        ("cross", GREEN),
        ("triangle", YELLOW),
        ("diamond", CYAN),
        ("bar", GREEN),
        ("small_disc", MAGENTA),
    ],
    # anything else (Recognition, Quality, new tasks): told apart by shape
    "shape": [
        ("triangle", YELLOW),
        ("diamond", CYAN),
        ("cross", GREEN),
        ("square", MAGENTA),
        ("ring", CYAN),
        ("disc", YELLOW),
        ("bar", GREEN),
        ("small_disc", MAGENTA),
    ],
}
# Det draws masses: a detection label without a designed or borrowed look (see
# detection_looks) is a compact blob, like the paper's lesions, polyps and nodules.
_TASK_FAMILY = {
    "Cancer": "mass",
    "State": "mass",
    "COVID": "mass",
    "Diseases": "lesion",
    "Level": "count",
    DETECTION_TASK: "mass",
}
# Labels with a designed look keep it in every task that has them.
_DESIGNED: dict[str, tuple[str, RGB]] = {
    "tumor": ("disc", YELLOW),
    "tumour": ("disc", YELLOW),
    "malignant": ("disc", YELLOW),
    "cancer": ("disc", YELLOW),
    "cyst": ("ring", CYAN),
    "stone": ("square", MAGENTA),
    "fracture": ("bar", GREEN),
    "fractured": ("bar", GREEN),
}
_LEVEL_WORDS = {
    "minimal": 1,
    "low": 1,
    "mild": 1,
    "medium": 2,
    "moderate": 2,
    "high": 3,
    "severe": 3,
    "proliferative": 4,
}
MAX_DOTS = 5  # six dots in a 2x3 block no longer fit a lung lobe at 32 px


def is_normal(label: str) -> bool:
    """Whether ``label`` is the no-finding label (drawn without a finding)."""
    return label.strip().lower() == "normal"


def _level_of(label: str) -> int | None:
    digits = re.search(r"\d+", label)
    if digits:
        return int(digits.group()) + 1  # "Level 0" still draws one dot: only Normal draws none
    for word, n in _LEVEL_WORDS.items():
        if word in label.lower():
            return n
    return None


def finding_for(task: str, label: str, labels: Sequence[str] | None = None) -> Finding | None:
    """The finding ``label`` draws in ``task``; None for Normal.

    ``labels`` is the task's whole label list: labels without a designed look then take
    distinct variants in sorted order, so two labels of one task never look alike. Without it
    the label is placed as if it were the task's only label.
    """
    if is_normal(label):
        return None
    pool = sorted({x for x in (*(labels or ()), label) if not is_normal(x)}, key=lambda s: (s.lower(), s))
    family = _TASK_FAMILY.get(task, "shape")
    if family == "count":
        # Parsed levels first (by level), unparsed ones after; counts strictly increase.
        ranked = sorted(pool, key=lambda s: (_level_of(s) is None, _level_of(s) or 0, s.lower()))
        count = 0
        for x in ranked:
            count = max(_level_of(x) or 0, count + 1)
            if x == label:
                break
        # Beyond MAX_DOTS the colour changes, so high levels stay countable and distinct.
        return Finding("dots", FINDING_COLOURS[((count - 1) // MAX_DOTS) % 4], (count - 1) % MAX_DOTS + 1)
    order = list(_FAMILY_ORDER[family])
    order += [(k, c) for k in KINDS for c in FINDING_COLOURS if (k, c) not in order]
    taken: dict[str, tuple[str, RGB]] = {}
    for x in pool:
        want = _DESIGNED.get(x.lower())
        if want and want not in taken.values():
            taken[x] = want
    free = [v for v in order if v not in taken.values()]
    for x in pool:
        if x not in taken:
            taken[x] = free.pop(0) if free else order[stable_int(task, x) % len(order)]
    kind, colour = taken[label]
    return Finding(kind, colour)


def detection_looks(
    det_labels: Sequence[str], classification: dict[str, Sequence[str]]
) -> dict[str, Finding]:
    """The finding each label of a Det subset draws.

    A label that is also a label of a classification task of the world (compared
    case-insensitively; first task in ``classification`` order) borrows that look, so that what
    a model learns to name in classification is the same thing it learns to box, and the
    reverse. Others take ``finding_for("Det", ...)`` (designed looks first, then masses). When
    borrowing would give two labels of the subset one look, none borrows: the labels of one
    subset always look different.
    """
    looks: dict[str, Finding] = {}
    for lab in det_labels:
        own = finding_for(DETECTION_TASK, lab, det_labels)
        for task, labels in classification.items():
            hit = next((x for x in labels if x.lower() == lab.lower() and not is_normal(x)), None)
            if hit is not None:
                own = finding_for(task, hit, labels)
                break
        looks[lab] = own  # type: ignore[assignment]  # Det labels are never Normal
    if len(set(looks.values())) < len(looks):
        looks = {lab: finding_for(DETECTION_TASK, lab, det_labels) for lab in det_labels}  # type: ignore[misc]
    return looks


# Dot layouts on a unit spacing, centred on (0, 0).
_DOT_LAYOUT = {
    1: [(0, 0)],
    2: [(-0.5, 0), (0.5, 0)],
    3: [(0, -0.45), (-0.5, 0.4), (0.5, 0.4)],
    4: [(-0.5, -0.5), (0.5, -0.5), (-0.5, 0.5), (0.5, 0.5)],
    5: [(-0.55, -0.55), (0.55, -0.55), (0, 0), (-0.55, 0.55), (0.55, 0.55)],
}


def finding_params(finding: Finding, k: float, size: int) -> tuple[dict[str, float], float]:
    """Sizes (unit-square units) at scale ``k`` and the finding's extent (radius of its hull).

    Thin parts have a floor in pixels so that they stay visible at 32 px.
    """
    px = 1.0 / size
    if finding.kind == "disc":
        p = {"r": 0.1 * k}
        return p, p["r"]
    if finding.kind == "small_disc":
        p = {"r": max(0.06 * k, 2.2 * px)}
        return p, p["r"]
    if finding.kind == "ring":
        ro = 0.11 * k
        p = {"ro": ro, "ri": min(0.055 * k, ro - 1.9 * px)}
        return p, ro
    if finding.kind == "square":
        p = {"h": 0.07 * k}
        return p, p["h"] * math.sqrt(2)
    if finding.kind in ("cross", "bar"):
        p = {"l": 0.095 * k, "w": max(0.03 * k, 1.0 * px)}
        return p, math.hypot(p["l"], p["w"])
    if finding.kind in ("triangle", "diamond"):
        p = {"r": 0.11 * k}
        return p, p["r"]
    if finding.kind == "dots":
        r = max(0.038 * k, 1.2 * px)
        d = max(0.08 * k, 2 * r + 1.0 * px)  # dots never touch, so they can be counted
        ext = max(math.hypot(a * d, b * d) for a, b in _DOT_LAYOUT[finding.count]) + r
        return {"r": r, "d": d}, ext
    raise ValueError(f"unknown finding kind {finding.kind!r}")


def finding_mask(
    finding: Finding, params: dict[str, float], x: np.ndarray, y: np.ndarray, cx: float, cy: float
) -> np.ndarray:
    """Pixels covered by ``finding`` with sizes ``params`` centred on (cx, cy) of the grid ``x``, ``y``."""
    dx, dy = x - cx, y - cy
    kind = finding.kind
    if kind in ("disc", "small_disc"):
        return dx * dx + dy * dy <= params["r"] ** 2
    if kind == "ring":
        d2 = dx * dx + dy * dy
        return (d2 <= params["ro"] ** 2) & (d2 >= params["ri"] ** 2)
    if kind == "square":
        return (np.abs(dx) <= params["h"]) & (np.abs(dy) <= params["h"])
    if kind == "cross":
        ax, ay = np.abs(dx), np.abs(dy)
        return ((ax <= params["l"]) & (ay <= params["w"])) | ((ay <= params["l"]) & (ax <= params["w"]))
    if kind == "bar":  # a diagonal crack
        a, b = (dx + dy) * math.sqrt(0.5), (dx - dy) * math.sqrt(0.5)
        return (np.abs(a) <= params["l"]) & (np.abs(b) <= params["w"])
    if kind == "triangle":  # equilateral, pointing up, centroid at (cx, cy)
        r, s3 = params["r"], math.sqrt(3)
        return (dy <= r / 2) & (s3 * dx - dy <= r) & (-s3 * dx - dy <= r)
    if kind == "diamond":
        return np.abs(dx) + np.abs(dy) <= params["r"]
    if kind == "dots":
        r2, d = params["r"] ** 2, params["d"]
        mask = np.zeros(x.shape, dtype=bool)
        for a, b in _DOT_LAYOUT[finding.count]:
            mask |= (dx - a * d) ** 2 + (dy - b * d) ** 2 <= r2
        return mask
    raise ValueError(f"unknown finding kind {kind!r}")
