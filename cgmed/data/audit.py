"""Leakage audit: no training sample may reach a held-out target.

Three checks, each naming its offenders: the training sample's subset is a target (by id);
its MAT triplet equals a target's (exact task tag, so CT Lung Cancer may teach CT Lung COVID,
as in the paper's Table 3 row 15); its image bytes equal the bytes of a target test image,
whatever subset or path they came through.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cgmed.data.record import Sample
from cgmed.data.subsets import SubsetInfo
from cgmed.errors import LeakageError

_HASH_CHUNK = 1 << 20


def image_digest(path: str, cache: dict[str, str]) -> str:
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
    records (derived subsets cut from the same parent; see ``cgmed.data.build.record_overlaps``).
    """
    targets = list(targets)
    target_ids = {t.id: t for t in targets}
    target_triplets = {t.triplet: t for t in targets}
    shared_records = shared_records or {}
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
    test_ids = {s.id for s in target_test}
    train_ids = {s.id for s in train}
    for s in shots:
        if s.subset not in target_ids or s.id in test_ids or s.source_split != "train":
            violations.append(f"{s.id}: in-context example not from a target's training portion")
        elif s.id in train_ids:
            violations.append(f"{s.id}: in-context example is also a training sample")
    checks = {"train_samples": len(train), "target_test_samples": len(target_test), "image_hashes": 0}
    if shots:
        checks["shot_examples"] = len(shots)
    seen_overlap = 0
    if check_images:
        cache: dict[str, str] = {}
        held = {}
        for s in target_test:
            held.setdefault(image_digest(s.image, cache), s)
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
        checks["image_hashes"] = len(cache)
    report = AuditReport(
        passed=not violations, checks=checks, violations=violations[:max_listed], seen_overlap=seen_overlap
    )
    if violations:
        listed = "\n".join(f"  - {v}" for v in violations[:max_listed])
        more = f"\n  ... and {len(violations) - max_listed} more" if len(violations) > max_listed else ""
        raise LeakageError(
            f"leakage audit failed: {len(violations)} training sample(s) reach held-out targets:\n{listed}{more}\n"
            "  fix: remove the targets (or their images) from split.train, or change split.targets"
        )
    return report
