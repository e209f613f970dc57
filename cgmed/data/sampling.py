"""Seeded, label-balanced draws from one subset's index: training, test and in-context samples.

Every draw shuffles each label's positions with an RNG keyed by (seed, purpose, subset, label), so
a subset's samples never depend on which other subsets a split reads or in which order. A sample
whose record or image turns out bad is reported to :class:`BadSamples` and replaced by the next
candidate of its label.
"""

from __future__ import annotations

from cgmed.data.record import Sample, rng_for
from cgmed.data.source import BadSamples, Source, SubsetIndex
from cgmed.data.split import balanced_quota


def _take(source: Source, idx: SubsetIndex, candidates: list[int], k: int, bad: BadSamples) -> list[Sample]:
    """The first ``k`` usable samples of ``candidates`` (a seeded permutation); bad ones are replaced."""
    out: list[Sample] = []
    start = 0
    while len(out) < k and start < len(candidates):
        batch = candidates[start : start + (k - len(out))]
        start += len(batch)
        out.extend(s for _, s in source.load_checked(idx, batch, bad))
    return out


def _by_label(idx: SubsetIndex, split: str, seed: int, purpose: str) -> dict[str, list[int]]:
    """Positions of each label in ``split``, each list in its own seeded random order."""
    groups: dict[str, list[int]] = {}
    for pos in idx.positions(split):
        groups.setdefault(idx.labels[idx.label_id[pos]], []).append(pos)
    for label, positions in groups.items():
        rng_for(seed, purpose, idx.info.id, label).shuffle(positions)
    return dict(sorted(groups.items()))


def sample_train(source: Source, idx: SubsetIndex, quota: int, seed: int, bad: BadSamples) -> list[Sample]:
    """``quota`` training samples of one subset, labels as balanced as availability allows."""
    groups = _by_label(idx, "train", seed, "train")
    per_label = balanced_quota({lab: len(p) for lab, p in groups.items()}, quota)
    out: list[Sample] = []
    for label, positions in groups.items():
        out += _take(source, idx, positions, per_label[label], bad)
    return out


def sample_shots(
    source: Source,
    idx: SubsetIndex,
    per_label: int,
    seed: int,
    bad: BadSamples,
    exclude: frozenset[str] = frozenset(),
) -> list[Sample]:
    """Up to ``per_label`` samples of each label of a subset's training portion (in-context
    examples), none of the ``exclude`` ids (samples already trained on)."""
    out: list[Sample] = []
    for positions in _by_label(idx, "train", seed, "shots").values():
        got: list[Sample] = []
        start = 0
        while len(got) < per_label and start < len(positions):
            batch = positions[start : start + per_label - len(got)]
            start += len(batch)
            got += [s for s in _take(source, idx, batch, len(batch), bad) if s.id not in exclude]
        out += got
    return out


def sample_balanced_test(
    source: Source, idx: SubsetIndex, per_label_cap: int | None, seed: int, bad: BadSamples
) -> list[Sample]:
    """A strictly label-balanced test set: the same count for every label, as large as allowed."""
    groups = _by_label(idx, "test", seed, "test")
    if not groups:
        return []
    n = min(len(p) for p in groups.values())
    if per_label_cap is not None:
        n = min(n, per_label_cap)
    picked = {lab: _take(source, idx, pos, n, bad) for lab, pos in groups.items()}
    n = min(len(v) for v in picked.values())  # a bad image may leave a label short: keep balance
    return [s for lab in picked for s in picked[lab][:n]]
