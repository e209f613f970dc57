"""Aggregation over repeats (training seeds, few-shot draws): one mean / SD rule for every report."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Spread:
    """Mean and SD of one number measured over repeats, with the values themselves."""

    mean: float
    sd: float
    values: list[float]


def spread(values: Sequence[float], ddof: int = 1) -> Spread:
    """Mean and SD of ``values``; the SD of a single value is 0.0.

    ``ddof=1`` (sample SD) is what the reports give over training seeds; ``ddof=0`` (population
    SD) is what the paper's Table 16 appears to give over few-shot draws, so the few-shot block
    uses it.
    """
    vals = list(values)
    sd = float(np.std(vals, ddof=ddof)) if len(vals) > 1 else 0.0
    return Spread(float(np.mean(vals)), sd, vals)
