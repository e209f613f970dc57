"""Accuracy with bootstrap intervals, per subset and per MAT combination, from predictions."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np


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


def summary(rows: Sequence[Mapping[str, Any]], n_boot: int, seed: int) -> dict[str, Any]:
    """``accuracy``, ``n``, ``chance`` (mean of 1/#options) and ``ci95`` of a group of predictions."""
    correct = [bool(r["correct"]) for r in rows]
    chance = float(np.mean([1.0 / max(1, len(r["options"])) for r in rows])) if rows else float("nan")
    return {
        "accuracy": float(np.mean(correct)) if rows else float("nan"),
        "n": len(rows),
        "chance": chance,
        "ci95": list(bootstrap_ci(correct, n_boot, seed)),
    }


def mat_key(row: Mapping[str, Any]) -> str:
    return f"{row['modality']} {row['area']} {row['task']}"


def results(predictions: Iterable[Mapping[str, Any]], n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The ``results.json`` document: overall, per subset and per MAT combination."""
    rows = list(predictions)
    by_subset: dict[str, list] = {}
    by_mat: dict[str, list] = {}
    for r in rows:
        by_subset.setdefault(r["subset"], []).append(r)
        by_mat.setdefault(mat_key(r), []).append(r)
    return {
        "overall": summary(rows, n_boot, seed),
        "per_subset": {k: {**summary(v, n_boot, seed), "mat": mat_key(v[0])} for k, v in sorted(by_subset.items())},
        "per_mat": {k: summary(v, n_boot, seed) for k, v in sorted(by_mat.items())},
        "unparsed": sum(1 for r in rows if r.get("pred") is None),
    }
