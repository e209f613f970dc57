"""Leakage audit: no training sample may reach a held-out target.

Four checks, each naming its offenders: the training sample's subset is a target (by id); its
subset holds a target's own records (derived subsets cut from the same parent records, found by
:func:`record_overlaps`); its MAT triplet equals a target's (exact task tag, so CT Lung Cancer may
teach CT Lung COVID, as in the paper's Table 3 row 15); its image bytes equal the bytes of a target
test image, whatever subset or path they came through. In-context examples (``shots.jsonl``) must
come from a target's training portion, never be trained on, and never show a target test image.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cgmed.data.record import Sample
from cgmed.data.source import SubsetIndex
from cgmed.data.subsets import SubsetInfo
from cgmed.errors import LeakageError

_HASH_CHUNK = 1 << 20


def image_digest(path: str, cache: dict[str, str]) -> str:
    """A digest of the image file's bytes, computed once per path (``cache``)."""
    digest = cache.get(path)
    if digest is None:
        h = hashlib.blake2b(digest_size=16)
        with open(path, "rb") as fh:
            while block := fh.read(_HASH_CHUNK):
                h.update(block)
        digest = cache[path] = h.hexdigest()
    return digest


@dataclass
class AuditReport:
    """What the audit checked (``split_meta.json``'s ``audit``); a failed audit raises instead."""

    passed: bool
    checks: dict[str, int]
    violations: list[str] = field(default_factory=list)
    seen_overlap: int = 0  # trained images that also sit in seen_test (not a CG leak; reported)

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "checks": self.checks,
            "violations": self.violations,
            "seen_test_image_overlap": self.seen_overlap,
        }


@dataclass
class ImageCheck:
    """The image-bytes check's findings."""

    violations: list[str]
    images_hashed: int
    seen_overlap: int  # seen_test samples whose image bytes are also trained on


def record_overlaps(
    indexes: Mapping[str, SubsetIndex], targets: list[str], train_ids: list[str]
) -> dict[str, tuple[str, int]]:
    """Training subsets that hold records of a target: derived subsets cut from the same parent
    records (a parent and its child, or siblings whose shares overlap), as
    ``{training subset: (target, shared record count)}``. Only subsets with a common root are
    compared, so plain releases cost nothing."""

    def root(sid: str) -> str:
        return indexes[sid].info.derived_from or sid

    def records(sid: str) -> set[tuple[str, int]]:
        idx = indexes[sid]
        return {(str(idx.files[idx.file_id[p]]), idx.offset[p]) for p in range(len(idx))}

    out: dict[str, tuple[str, int]] = {}
    for t in targets:
        for sid in train_ids:
            if sid != t and sid not in out and root(sid) == root(t):
                shared = len(records(sid) & records(t))
                if shared:
                    out[sid] = (t, shared)
    return out


def _membership_violations(
    train: Sequence[Sample],
    targets: Sequence[SubsetInfo],
    allowed_target_train: frozenset[str],
    shared_records: Mapping[str, tuple[str, int]],
) -> list[str]:
    """Training samples of a target subset, of a subset holding a target's records, or of a
    target's MAT triplet (``allowed_target_train`` ids pass)."""
    target_ids = {t.id for t in targets}
    target_triplets = {t.triplet: t for t in targets}
    violations: list[str] = []
    for s in train:
        if s.id in allowed_target_train:
            continue
        if s.subset in target_ids:
            violations.append(f"{s.id}: subset {s.subset} is a held-out target")
        elif s.subset in shared_records:
            t, n = shared_records[s.subset]
            violations.append(
                f"{s.id}: subset {s.subset} holds {n} records of target {t} (both are cut from the same "
                "records; see data.derived)"
            )
        elif (s.modality, s.area, s.task) in target_triplets:
            t = target_triplets[(s.modality, s.area, s.task)]
            violations.append(
                f"{s.id}: MAT triplet {s.modality} {s.area} {s.task} of subset {s.subset} is the triplet of "
                f"target {t.id}"
            )
    return violations


def _shot_violations(
    shots: Sequence[Sample], train: Sequence[Sample], target_test: Sequence[Sample], target_ids: set[str]
) -> list[str]:
    """In-context examples that are not from a target's training portion, or are trained on."""
    test_ids = {s.id for s in target_test}
    train_ids = {s.id for s in train}
    violations: list[str] = []
    for s in shots:
        if s.subset not in target_ids or s.id in test_ids or s.source_split != "train":
            violations.append(f"{s.id}: in-context example not from a target's training portion")
        elif s.id in train_ids:
            violations.append(f"{s.id}: in-context example is also a training sample")
    return violations


def _check_images(
    train: Sequence[Sample],
    target_test: Sequence[Sample],
    shots: Sequence[Sample],
    seen_test: Sequence[Sample],
) -> ImageCheck:
    """Training samples and in-context examples showing the bytes of a target test image."""
    cache: dict[str, str] = {}
    held: dict[str, Sample] = {}
    for s in target_test:
        held.setdefault(image_digest(s.image, cache), s)
    violations: list[str] = []
    for s in train:
        hit = held.get(image_digest(s.image, cache))
        if hit is not None:
            violations.append(
                f"{s.id}: image {s.image} has the same bytes as target test sample {hit.id} ({hit.image})"
            )
    for s in shots:
        hit = held.get(image_digest(s.image, cache))
        if hit is not None:
            violations.append(
                f"{s.id}: in-context example image {s.image} has the same bytes as target test sample "
                f"{hit.id} ({hit.image})"
            )
    train_digests = {image_digest(s.image, cache) for s in train}
    seen_overlap = sum(image_digest(s.image, cache) in train_digests for s in seen_test)
    return ImageCheck(violations, len(cache), seen_overlap)


def audit_split(
    train: Sequence[Sample],
    target_test: Sequence[Sample],
    targets: Iterable[SubsetInfo],
    seen_test: Sequence[Sample] = (),
    check_images: bool = True,
    max_listed: int = 20,
    allowed_target_train: frozenset[str] = frozenset(),
    shots: Sequence[Sample] = (),
    shared_records: Mapping[str, tuple[str, int]] | None = None,
) -> AuditReport:
    """Check a built split; returns the report or raises LeakageError listing offenders.

    ``allowed_target_train`` names training samples deliberately drawn from a target's own
    training portion (``split.target_train_samples``); they pass the id and triplet checks, never
    the image check: a target test image reaching training is leakage whatever the route.
    ``shots`` (in-context examples, never trained on) must come from a target's training portion
    and must not show a target test image: a question answered next to its own image is leakage too.
    ``shared_records`` maps a training subset to (target, count) when it holds that target's own
    records (see :func:`record_overlaps`).
    """
    targets = list(targets)
    violations = _membership_violations(train, targets, allowed_target_train, shared_records or {})
    violations += _shot_violations(shots, train, target_test, {t.id for t in targets})
    checks = {"train_samples": len(train), "target_test_samples": len(target_test), "image_hashes": 0}
    if shots:
        checks["shot_examples"] = len(shots)
    seen_overlap = 0
    if check_images:
        images = _check_images(train, target_test, shots, seen_test)
        violations += images.violations
        checks["image_hashes"] = images.images_hashed
        seen_overlap = images.seen_overlap
    if violations:
        listed = "\n".join(f"  - {v}" for v in violations[:max_listed])
        more = f"\n  ... and {len(violations) - max_listed} more" if len(violations) > max_listed else ""
        raise LeakageError(
            f"leakage audit failed: {len(violations)} training sample(s) reach held-out targets:\n{listed}{more}\n"
            "  fix: remove the targets (or their images) from split.train, or change split.targets"
        )
    return AuditReport(passed=True, checks=checks, violations=[], seen_overlap=seen_overlap)
