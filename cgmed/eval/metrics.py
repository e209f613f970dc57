"""Accuracy with bootstrap intervals, per subset and per MAT combination, from predictions.

Groups that hold detection rows (rows with a ground-truth ``box``) also get ``ciou``
(cumulative IoU = sum of intersections / sum of unions, the paper's Table 5 metric, via
:func:`cgmed.data.boxes.ciou`), ``mean_iou``, ``acc_iou50``, ``n_det`` and ``ciou_ci95`` (a
bootstrap over rows). In a mixed group ``accuracy`` counts every row (a detection row is
correct at IoU >= 0.5) and ``chance`` averages the classification rows only; a group without
classification rows has ``chance`` NaN. Groups without detection rows get ``accuracy``, ``n``,
``chance``, ``ci95``, ``unparsed`` and ``unparsed_rate`` only.

``unparsed`` counts the rows whose answer could not be read (``pred`` None: a generated answer
:func:`cgmed.eval.parse.parse_choice` cannot map to one option, a box answer without a box); they
are wrong, so they stay in ``n``. Option scoring always gives a letter (``unparsed`` 0).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from cgmed.data.boxes import ciou, inter_union, is_detection_row


def bootstrap_ci(correct: Sequence[bool], n_boot: int, seed: int, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of 0/1 outcomes (seeded, so reruns agree)."""
    x = np.asarray(correct, dtype=np.float64)
    if x.size == 0:
        return (float("nan"), float("nan"))
    if n_boot <= 0:
        m = float(x.mean())
        return (m, m)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return (float(lo), float(hi))


def ciou_bootstrap_ci(
    rows: Sequence[Mapping[str, Any]], n_boot: int, seed: int, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the cIoU of detection rows (rows resampled, seeded)."""
    parts = np.asarray([inter_union(r.get("pred_box"), r["box"]) for r in rows], dtype=np.float64)
    if parts.size == 0:
        return (float("nan"), float("nan"))
    point = ciou((r.get("pred_box"), r["box"]) for r in rows)
    if n_boot <= 0:
        return (point, point)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(parts), size=(n_boot, len(parts)))
    inter, union = parts[idx, 0].sum(axis=1), parts[idx, 1].sum(axis=1)
    values = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    lo, hi = np.quantile(values, [(1 - level) / 2, 1 - (1 - level) / 2])
    return (float(lo), float(hi))


def detection_summary(rows: Sequence[Mapping[str, Any]], n_boot: int, seed: int) -> dict[str, Any]:
    """``ciou``, ``ciou_ci95``, ``mean_iou``, ``acc_iou50`` and ``n_det`` of detection rows."""
    ious = [float(r.get("iou") or 0.0) for r in rows]
    return {
        "ciou": ciou((r.get("pred_box"), r["box"]) for r in rows),
        "ciou_ci95": list(ciou_bootstrap_ci(rows, n_boot, seed)),
        "mean_iou": float(np.mean(ious)),
        "acc_iou50": float(np.mean([v >= 0.5 for v in ious])),
        "n_det": len(rows),
    }


def summary(rows: Sequence[Mapping[str, Any]], n_boot: int, seed: int) -> dict[str, Any]:
    """``accuracy``, ``n``, ``chance`` (mean of 1/#options) and ``ci95`` of a group of predictions,
    plus the detection metrics when the group holds detection rows (module docstring)."""
    correct = [bool(r["correct"]) for r in rows]
    det = [r for r in rows if is_detection_row(r)]
    cls = [r for r in rows if not is_detection_row(r)] if det else rows
    # A box has no chance level: a group of detection rows only gets NaN, as an empty group does.
    chance = float(np.mean([1.0 / max(1, len(r["options"])) for r in cls])) if cls else float("nan")
    unparsed = sum(1 for r in rows if is_unparsed(r))
    out = {
        "accuracy": float(np.mean(correct)) if rows else float("nan"),
        "n": len(rows),
        "chance": chance,
        "ci95": list(bootstrap_ci(correct, n_boot, seed)),
        "unparsed": unparsed,
        "unparsed_rate": unparsed / len(rows) if rows else float("nan"),
    }
    if det:
        out.update(detection_summary(det, n_boot, seed))
    return out


def is_unparsed(row: Mapping[str, Any]) -> bool:
    """An answer that could not be read; a question whose image could not be read (``bad_image``)
    got no answer at all and is counted apart (``bad_images`` in results.json)."""
    return row.get("pred") is None and not row.get("bad_image")


def mat_key(row: Mapping[str, Any]) -> str:
    return f"{row['modality']} {row['area']} {row['task']}"


def results(predictions: Iterable[Mapping[str, Any]], n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The ``results.json`` document: overall, per subset and per MAT combination; ``unparsed``
    (all rows) and ``unparsed_reasons`` (the parser's reason per unreadable generated answer)."""
    rows = list(predictions)
    by_subset: dict[str, list] = {}
    by_mat: dict[str, list] = {}
    for r in rows:
        by_subset.setdefault(r["subset"], []).append(r)
        by_mat.setdefault(mat_key(r), []).append(r)
    return {
        "overall": summary(rows, n_boot, seed),
        "per_subset": {
            k: {**summary(v, n_boot, seed), "mat": mat_key(v[0])} for k, v in sorted(by_subset.items())
        },
        "per_mat": {k: summary(v, n_boot, seed) for k, v in sorted(by_mat.items())},
        "unparsed": sum(1 for r in rows if is_unparsed(r)),
        "unparsed_reasons": dict(
            sorted(Counter(r["parse"] for r in rows if is_unparsed(r) and "parse" in r).items())
        ),
    }
