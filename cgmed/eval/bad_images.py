"""Test images that cannot be read: found before the model loads, counted against ``eval.max_bad_images``.

A question whose image cannot be read (missing, truncated, not an image, larger than PIL's
decompression-bomb limit: every failure of :func:`cgmed.data.imaging.open_image`) is never
dropped from the test set, which would quietly shrink the denominator: it is scored wrong, its
row says ``bad_image: true`` with the reason (``image_error``), and ``results.json`` counts them.
More than ``eval.max_bad_images`` of them (0 by default) stop the evaluation, naming the first
records and the key. The images of an in-context example pool are shown with every question that
draws them, so one that cannot be read always stops the evaluation.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from cgmed.data.boxes import is_detection_row
from cgmed.data.imaging import ImageConfig, open_image
from cgmed.errors import BadImageError

log = logging.getLogger(__name__)
LISTED = 5  # unreadable records named in a message; the rest are counted


@dataclass(frozen=True)
class BadImage:
    """A record whose image cannot be read: its position in the records screened, and why."""

    position: int
    record_id: str
    path: str
    reason: str


def find_bad_images(records: Sequence[dict[str, Any]], image: ImageConfig) -> list[BadImage]:
    """The records of ``records`` whose image does not convert the way the scorer converts it."""
    bad = []
    for position, record in enumerate(records):
        reason = _unreadable(record, image)
        if reason is not None:
            bad.append(BadImage(position, str(record["id"]), str(record["image"]), reason))
    return bad


def check_bad_image_limit(bad: Sequence[BadImage], total: int, limit: int, manifest: str) -> None:
    """Stop (BadImageError naming the first record and ``eval.max_bad_images``) when more than
    ``limit`` of the ``total`` test images cannot be read; warn about those within the limit."""
    if not bad:
        return
    listed = ", ".join(f"{b.record_id} ({b.path})" for b in bad[:LISTED]) + (
        " ..." if len(bad) > LISTED else ""
    )
    if len(bad) <= limit:
        log.warning(
            "%d of %d test images cannot be read; their questions are scored wrong (eval.max_bad_images=%d): %s",
            len(bad),
            total,
            limit,
            listed,
        )
        return
    first = bad[0]
    raise BadImageError(
        f"{manifest}, record {first.record_id}",
        f"image {first.path} cannot be read ({first.reason}); {len(bad)} of {total} test images are "
        f"unreadable ({listed}), more than eval.max_bad_images={limit}",
        "re-export these images or drop their records from the manifest, or set eval.max_bad_images=N "
        "to score up to N unreadable images as wrong answers (they stay in the test set's size)",
    )


def check_pool_images(pool_path: str, pool_records: Iterable[dict[str, Any]], image: ImageConfig) -> None:
    """Stop at the first in-context example (of the pool at ``pool_path``) whose image cannot be read."""
    for record in pool_records:
        reason = _unreadable(record, image)
        if reason is not None:
            raise BadImageError(
                f"{pool_path}, record {record['id']}",
                f"in-context example image {record['image']} cannot be read ({reason})",
                "re-export it or drop the record from the pool: it is shown with every question that "
                "draws it, so eval.max_bad_images does not cover it",
            )


def bad_image_row(record: dict[str, Any], bad: BadImage) -> dict[str, Any]:
    """The prediction row of a question whose image cannot be read: no answer, wrong."""
    row = {
        "id": record["id"],
        "subset": record["subset"],
        "modality": record["modality"],
        "area": record["area"],
        "task": record["task"],
        "options": record.get("options") or [],
        "answer": record["answer"],
        "pred": None,
        "correct": False,
        "bad_image": True,
        "image_error": bad.reason,
    }
    if is_detection_row(record):
        row.update(box=list(record["box"]), pred_box=None, iou=0.0)
    return row


def _unreadable(record: dict[str, Any], image: ImageConfig) -> str | None:
    """Why the record's image cannot be read, or None when it can."""
    try:
        open_image(record["image"], image, modality=record.get("modality"))
    except BadImageError as err:
        first_line = str(err).split("\n", 1)[0]
        return first_line.removeprefix(f"{err.where}: ")
    return None
