"""Seeded, label-balanced draws from one subset's index: training, test and in-context samples.

Labels are grouped by :func:`cgmed.data.choices.canonical_label`, so the two spellings of one
label set ("Nodule, Effusion", "Effusion, Nodule") are one label. Every draw shuffles each
label's positions with an RNG keyed by (seed, purpose, subset, label), so a subset's samples
never depend on which other subsets a split reads or in which order. A sample whose record or
image turns out bad is reported to :class:`BadSamples` and replaced by the next candidate of its
label.

Test sets follow one of two balance rules (:func:`balance_rule`, stated in
:class:`cgmed.data.split.SplitConfig`): strictly per label (set) for single-label subsets,
greedy per individual label (:func:`greedy_per_label`) for multi-label subsets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from cgmed.data.choices import canonical_label, is_label_set, label_parts
from cgmed.data.record import Sample, rng_for
from cgmed.data.source import BadSamples, Source, SubsetIndex
from cgmed.data.split import balanced_quota

PER_LABEL_SET = "per_label_set"  # single-label subsets: every label the same count
PER_LABEL = "per_label"  # multi-label subsets: individual labels about equally present


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
    """Positions of each (canonical) label in ``split``, each list in its own seeded random order."""
    canonical = [canonical_label(label) for label in idx.labels]
    groups: dict[str, list[int]] = {}
    for pos in idx.positions(split):
        groups.setdefault(canonical[idx.label_id[pos]], []).append(pos)
    for label, positions in groups.items():
        rng_for(seed, purpose, idx.info.id, label).shuffle(positions)
    return dict(sorted(groups.items()))


def balance_rule(idx: SubsetIndex) -> str:
    """The test-set rule of a subset: ``per_label`` when any of its labels is a label set."""
    return PER_LABEL if any(is_label_set(label) for label in idx.labels) else PER_LABEL_SET


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
    source: Source,
    idx: SubsetIndex,
    per_label_cap: int | None,
    seed: int,
    bad: BadSamples,
    min_samples: int = 0,
) -> list[Sample]:
    """One subset's test set under its rule (:func:`balance_rule`): strictly label-balanced, or
    per individual label with at least ``min_samples`` samples when the data allow it."""
    if balance_rule(idx) == PER_LABEL:
        return _per_label_test(source, idx, per_label_cap, seed, bad, min_samples)
    groups = _by_label(idx, "test", seed, "test")
    if not groups:
        return []
    n = min(len(p) for p in groups.values())
    if per_label_cap is not None:
        n = min(n, per_label_cap)
    picked = {lab: _take(source, idx, pos, n, bad) for lab, pos in groups.items()}
    n = min(len(v) for v in picked.values())  # a bad image may leave a label short: keep balance
    return [s for lab in picked for s in picked[lab][:n]]


def _per_label_test(
    source: Source, idx: SubsetIndex, cap: int | None, seed: int, bad: BadSamples, min_samples: int
) -> list[Sample]:
    """A multi-label test set by :func:`greedy_per_label`; a bad record leaves the candidates
    and the draw is made again without it (the same seeded order, so good picks stay)."""
    order = idx.positions("test")
    rng_for(seed, "test", idx.info.id, PER_LABEL).shuffle(order)
    label_parts_of = [label_parts(label) for label in idx.labels]
    parts = {pos: label_parts_of[idx.label_id[pos]] for pos in order}
    loaded: dict[int, Sample] = {}
    dropped: set[int] = set()
    while True:
        picked = greedy_per_label([p for p in order if p not in dropped], parts, cap, min_samples)
        todo = [p for p in picked if p not in loaded]
        loaded.update(source.load_checked(idx, todo, bad))
        newly_bad = {p for p in todo if p not in loaded}
        if not newly_bad:
            return [loaded[p] for p in picked]
        dropped |= newly_bad


def greedy_per_label(
    order: Sequence[int], parts: Mapping[int, tuple[str, ...]], cap: int | None, minimum: int
) -> list[int]:
    """Records (from ``order``, a seeded permutation) in which every individual label is about
    equally present; ``parts[record]`` are the record's individual labels.

    Repeatedly, the label present least often so far (ties by name) takes its next unused record
    in ``order``: first until every label is present ``goal`` times, ``goal`` being the record
    count of the rarest label (at most ``cap``), then on until ``minimum`` records are taken, the
    records run out, or every label with records left has reached ``cap``.
    """
    pools: dict[str, list[int]] = {}
    for pos in order:
        for label in parts[pos]:
            pools.setdefault(label, []).append(pos)
    if not pools:
        return []
    goal = min(len(pool) for pool in pools.values())
    if cap is not None:
        goal = min(goal, cap)
    counts = dict.fromkeys(pools, 0)
    cursor = dict.fromkeys(pools, 0)
    used: set[int] = set()
    picked: list[int] = []

    def has_unused(label: str) -> bool:
        pool, i = pools[label], cursor[label]
        while i < len(pool) and pool[i] in used:
            i += 1
        cursor[label] = i
        return i < len(pool)

    def take_for_least(labels: list[str]) -> None:
        label = min(labels, key=lambda lab: (counts[lab], lab))
        pos = pools[label][cursor[label]]  # has_unused() moved the cursor onto an unused record
        used.add(pos)
        picked.append(pos)
        for part in parts[pos]:
            counts[part] += 1

    while short := [lab for lab in pools if counts[lab] < goal and has_unused(lab)]:
        take_for_least(short)
    while len(picked) < minimum and (
        open_labels := [lab for lab in pools if (cap is None or counts[lab] < cap) and has_unused(lab)]
    ):
        take_for_least(open_labels)
    return picked
