"""Detection boxes ``{<x1><y1><x2><y2>}`` on a 0-100 grid: write, read, validate, overlap.

One definition for everything that handles boxes: the release and conversation readers validate
records with :func:`check_box`, the synthetic world and the split builder write answers with
:func:`format_box`, the evaluator reads generated answers with :func:`parse_box` and scores them
with :func:`iou` / :func:`ciou` (whose parts, :func:`inter_union`, the bootstrap resamples).
:func:`is_detection_row` tells a detection row of a manifest or of predictions from a
multiple-choice one.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

Box = tuple[float, float, float, float]


def check_box(values: Any) -> list[float]:
    """Four finite numbers in [0, 100] with x1 <= x2 and y1 <= y2, as floats.

    Strict on purpose (unlike :func:`parse_box`, which reads model output leniently): a record's
    box must be exactly one well-formed box. Raises ValueError saying what is wrong.
    """
    if not isinstance(values, (list, tuple)) or len(values) != 4:
        raise ValueError(f"{values!r} is not 4 numbers [x1, y1, x2, y2]")
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values):
        raise ValueError(f"{values!r} holds a value that is not a number")
    box = [float(v) for v in values]
    if not all(math.isfinite(v) and 0.0 <= v <= 100.0 for v in box):
        raise ValueError(f"{values!r} has a value outside the 0-100 grid")
    if box[0] > box[2] or box[1] > box[3]:
        raise ValueError(f"{values!r} has x1 > x2 or y1 > y2")
    return box


def is_detection_row(row: Mapping[str, Any]) -> bool:
    """A manifest or prediction row of a detection sample: it carries a ground-truth ``box``
    (multiple-choice rows have none; see ``Sample.to_json``)."""
    return row.get("box") is not None


_NUM = r"<\s*(-?\d+)\s*>"
_BOX = re.compile(r"(\{\s*)?" + r"\s*".join([_NUM] * 4) + r"(\s*\})?")
_MORE = re.compile(r"\s*<\s*-?\d")
_BEFORE = re.compile(r"<\s*-?\d+\s*>\s*$")


def _clip(v: float) -> float:
    return min(100.0, max(0.0, float(v)))


def parse_box(text: str | None) -> Box | None:
    """The first well-formed box in ``text``, written ``{<x1><y1><x2><y2>}`` (MiniGPT-v2 style,
    integers on a 0-100 grid, spaces allowed) or bare ``<x1><y1><x2><y2>``; None when there is
    none, or when the first run of four numbers is malformed (more than four numbers in a row,
    a brace on one side only). Groups that are not four integers are not boxes. Values are
    clipped to [0, 100] and each pair is ordered so x1 <= x2 and y1 <= y2."""
    if not text:
        return None
    for m in _BOX.finditer(text):
        if bool(m.group(1)) != bool(m.group(6)):
            return None  # "{<1><2><3><4>" or "<1><2><3><4>}": malformed
        if not m.group(1) and (_MORE.match(text, m.end()) or _BEFORE.search(text, 0, m.start())):
            return None  # a run of five or more numbers
        x1, y1, x2, y2 = (_clip(int(m.group(k))) for k in range(2, 6))
        return (min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2))
    return None


def format_box(box: Sequence[float]) -> str:
    """``{<x1><y1><x2><y2>}`` with each value rounded half up to an integer and clipped to
    [0, 100] (the order of the values is kept)."""
    if len(box) != 4:
        raise ValueError(f"a box has 4 values (x1, y1, x2, y2), got {len(box)}")
    vals = []
    for v in box:
        f = float(v)
        if not math.isfinite(f):
            raise ValueError(f"box value {v!r} is not finite")
        vals.append(int(_clip(math.floor(f + 0.5))))
    return "{" + "".join(f"<{v}>" for v in vals) + "}"


def area(b: Sequence[float]) -> float:
    """Area of an ``(x1, y1, x2, y2)`` box (0 for an inverted one)."""
    return max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])


def _inter(a: Sequence[float], b: Sequence[float]) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return max(0.0, w) * max(0.0, h)


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``(x1, y1, x2, y2)`` boxes; 0 when the union is 0."""
    inter = _inter(a, b)
    union = area(a) + area(b) - inter
    return inter / union if union > 0 else 0.0


def inter_union(pred: Sequence[float] | None, gt: Sequence[float]) -> tuple[float, float]:
    """Intersection and union areas of one (prediction, truth) pair as :func:`ciou` counts them:
    no prediction gives 0 and the truth's area."""
    if pred is None:
        return 0.0, area(gt)
    i = _inter(pred, gt)
    return i, area(pred) + area(gt) - i


def ciou(pairs: Iterable[tuple[Sequence[float] | None, Sequence[float]]]) -> float:
    """Cumulative IoU over a test set: sum of intersections / sum of unions.

    ``pairs`` are (prediction, ground truth); a None prediction (no box could be parsed)
    contributes 0 to the intersections and the ground-truth area to the unions. 0 when the
    unions sum to 0 (e.g. no pairs).

    Why cIoU: the paper evaluates detection as MiniGPT-v2 does, and cumulative IoU is the
    referring-segmentation metric (RefCOCO-style) that weights every sample by its box size
    instead of averaging per-sample IoUs, so a few tiny boxes cannot dominate the score and
    unparseable answers still count against it.
    """
    inter = union = 0.0
    for pred, gt in pairs:
        i, u = inter_union(pred, gt)
        inter += i
        union += u
    return inter / union if union > 0 else 0.0
