"""Statistics of the reports: mean and SD over repeats (training seeds, few-shot draws), and the
CG report's bootstrap over seeds and questions with its paired comparison of two arms.

Every seed of a CG target answers the same test questions, so seeds and questions are crossed,
not nested. One bootstrap replicate (:class:`Resamples`) draws the seeds with replacement (the
outer level) and the questions once, the same questions for every seed and every arm. Drawing
questions anew for each seed, or pooling seed x question rows, would count a hard question as
several independent draws and give intervals about sqrt(#seeds) too narrow on the question part.
A paired comparison takes the difference of two arms within each replicate, so both arms see the
same resampled questions and seeds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from cgmed.data.boxes import inter_union
from cgmed.errors import DataError

LEVEL = 0.95  # of every interval
ALPHA = 0.05  # a difference is significant when its two-sided p-value is below this
INTERVAL_METHOD = (
    "two-level bootstrap: the seeds resampled with replacement (outer level), then the test questions "
    "resampled once per replicate, the same for every seed and arm; percentile 95% interval of the mean "
    "over seeds (a one-run arm such as Baseline: questions only)"
)


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


@dataclass(frozen=True)
class Outcomes:
    """One arm's per-question outcomes: a row per run (seed), a column per question of ``ids``.

    ``values`` holds 0/1 correctness (``metric="accuracy"``), or intersection and union areas in
    a last axis of 2 (``metric="ciou"``: a run's cIoU is the sum of intersections over the sum of
    unions)."""

    ids: tuple[str, ...]
    values: np.ndarray
    metric: str

    def per_run(self) -> np.ndarray:
        """The metric of each run."""
        if self.metric == "ciou":
            return _ratio(self.values[..., 0].sum(axis=1), self.values[..., 1].sum(axis=1))
        return self.values.mean(axis=1)

    def point(self) -> float:
        """The mean over runs."""
        return float(self.per_run().mean())


def _ratio(inter: np.ndarray, union: np.ndarray) -> np.ndarray:
    return np.divide(inter, union, out=np.zeros_like(inter, dtype=np.float64), where=union > 0)


def _question_value(row: Mapping[str, Any], metric: str) -> Any:
    if metric == "ciou":
        return inter_union(row.get("pred_box"), row["box"])
    return float(bool(row["correct"]))


def outcomes(runs: Sequence[Sequence[Mapping[str, Any]]], metric: str, sources: Sequence[str]) -> Outcomes:
    """The prediction rows of each run (``predictions.jsonl``, named by ``sources`` in errors)
    aligned by question id; every run must hold the same questions, each once."""
    ids: tuple[str, ...] | None = None
    table = []
    for rows, source in zip(runs, sources, strict=True):
        by_id = {str(r["id"]): r for r in rows}
        if len(by_id) != len(rows):
            raise DataError(source, "holds a question id twice", "re-run that evaluation (delete its folder)")
        if ids is None:
            ids = tuple(sorted(by_id))
        elif set(by_id) != set(ids):
            raise DataError(
                source,
                f"scores other questions than {sources[0]} ({len(set(by_id) ^ set(ids))} ids differ)",
                "evaluate every arm on the same test.jsonl (delete the stale evaluation folder and rerun)",
            )
        table.append([_question_value(by_id[i], metric) for i in ids])
    return Outcomes(ids or (), np.asarray(table, dtype=np.float64), metric)


@dataclass(frozen=True)
class Resamples:
    """The bootstrap replicates that every arm of one comparison shares: per replicate, how many
    times each seed and each question is drawn."""

    seed_counts: np.ndarray  # (replicates, seeds)
    question_counts: np.ndarray  # (replicates, questions)

    @property
    def replicates(self) -> int:
        return len(self.question_counts)


def resamples(n_seeds: int, n_questions: int, replicates: int, seed: int) -> Resamples:
    """``replicates`` draws of seeds and of questions (seeded, so reruns agree)."""
    rng = np.random.default_rng(seed)
    reps = max(0, replicates)
    seeds = rng.multinomial(n_seeds, np.full(n_seeds, 1.0 / n_seeds), size=reps)
    questions = rng.multinomial(n_questions, np.full(n_questions, 1.0 / max(1, n_questions)), size=reps)
    return Resamples(seeds, questions)


def replicate_values(arm: Outcomes, draws: Resamples) -> np.ndarray:
    """The arm's metric in each replicate: per run on the drawn questions, then the mean over the
    drawn seeds (a one-run arm, which does not depend on the seed, stands for every seed)."""
    weights = draws.question_counts.astype(np.float64)
    if arm.metric == "ciou":
        per_run = _ratio(weights @ arm.values[..., 0].T, weights @ arm.values[..., 1].T)
    else:
        per_run = weights @ arm.values.T / max(1, weights.shape[1])
    if per_run.shape[1] == 1:
        return per_run[:, 0]
    if per_run.shape[1] != draws.seed_counts.shape[1]:
        raise ValueError(f"{per_run.shape[1]} runs against {draws.seed_counts.shape[1]} drawn seeds")
    return (per_run * draws.seed_counts).sum(axis=1) / draws.seed_counts.shape[1]


def percentile_interval(values: np.ndarray, point: float) -> list[float]:
    """The central ``LEVEL`` interval of bootstrap ``values`` (``[point, point]`` without any)."""
    if values.size == 0:
        return [point, point]
    lo, hi = np.quantile(values, [(1 - LEVEL) / 2, 1 - (1 - LEVEL) / 2])
    return [float(lo), float(hi)]


def interval(arm: Outcomes, draws: Resamples) -> list[float]:
    """The arm's 95% interval under :data:`INTERVAL_METHOD`."""
    return percentile_interval(replicate_values(arm, draws), arm.point())


@dataclass(frozen=True)
class Paired:
    """Trained minus a rival on the same questions: the mean over seeds of the per-seed
    differences, its interval and two-sided p-value from the shared bootstrap replicates, and
    (for accuracy) McNemar's exact test per seed."""

    difference: float
    per_seed: list[float]
    ci95: list[float]
    p_value: float | None  # None without bootstrap replicates
    significant: bool | None
    replicates: int
    n_questions: int
    mcnemar: list[dict[str, Any]] | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def paired(trained: Outcomes, rival: Outcomes, draws: Resamples, seeds: Sequence[int]) -> Paired:
    """Compare ``trained`` with ``rival`` question by question (both aligned by id). A one-run
    rival (Baseline) is paired with every seed's Trained."""
    if trained.ids != rival.ids:
        raise ValueError("paired arms must score the same questions")
    per_seed = trained.per_run() - rival.per_run()
    difference = float(per_seed.mean())
    reps = replicate_values(trained, draws) - replicate_values(rival, draws)
    p_value = significant = None
    if reps.size:
        # the share of replicates on the far side of 0, both tails (ties at 0 count against significance)
        p_value = float(min(1.0, 2 * min(np.mean(reps <= 0), np.mean(reps >= 0))))
        significant = p_value < ALPHA
    mcnemar = None
    if trained.metric == "accuracy":
        rival_rows = (
            rival.values if len(rival.values) > 1 else np.repeat(rival.values, len(trained.values), 0)
        )
        mcnemar = [
            {"seed": int(s), **mcnemar_exact(t, r)}
            for s, t, r in zip(seeds, trained.values, rival_rows, strict=True)
        ]
    return Paired(
        difference=difference,
        per_seed=[float(d) for d in per_seed],
        ci95=percentile_interval(reps, difference),
        p_value=p_value,
        significant=significant,
        replicates=draws.replicates,
        n_questions=len(trained.ids),
        mcnemar=mcnemar,
    )


def mcnemar_exact(first: np.ndarray, second: np.ndarray) -> dict[str, Any]:
    """McNemar's exact test of two 0/1 outcome vectors on the same questions (``first`` Trained's,
    ``second`` its rival's): the questions only one of them gets right, and the two-sided binomial
    p-value of that split."""
    only_first = int(np.sum((first == 1) & (second == 0)))
    only_second = int(np.sum((first == 0) & (second == 1)))
    discordant = only_first + only_second
    tail = sum(math.comb(discordant, k) for k in range(min(only_first, only_second) + 1))
    p_value = min(1.0, 2 * tail / 2**discordant) if discordant else 1.0
    return {"trained_only": only_first, "rival_only": only_second, "p_value": float(p_value)}
