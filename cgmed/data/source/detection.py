"""The box of a detection record (task ``Det``): from ``bbox`` and/or a box written in the answer.

Strict on purpose (unlike :func:`cgmed.data.boxes.parse_box`, which reads model output leniently):
a record's box must be exactly one well-formed box, and when a record gives it twice (``bbox`` and
the answer ``{<x1><y1><x2><y2>}``) the two must agree as :func:`cgmed.data.boxes.format_box` writes it.
"""

from __future__ import annotations

import math
import re
from typing import Any

from cgmed.data.boxes import check_box
from cgmed.data.source.bad import BadSample

_NUMBER = r"\s*<\s*(-?\d+(?:\.\d+)?)\s*>"
_ANSWER_BOX = re.compile(r"\s*\{" + _NUMBER * 4 + r"\s*\}\s*")


def record_box(record: dict[str, Any], answer: str | None, answer_field: str) -> list[float]:
    """The box of ``record``: its ``bbox``, else the box in ``answer`` (``None``: no answer given).

    ``answer_field`` names the answer in messages. With both, they must agree; an answer that is
    not a box is allowed next to a ``bbox``. Raises BadSample("malformed box") otherwise.
    """
    match = None if answer is None else _ANSWER_BOX.fullmatch(answer)
    from_answer = _checked([float(match.group(i)) for i in range(1, 5)], answer_field) if match else None
    if "bbox" in record:
        box = _checked(record["bbox"], "bbox")
        if from_answer is not None and _as_written(box) != _as_written(from_answer):
            raise BadSample(
                "malformed box", f"{answer_field} {answer!r} disagrees with bbox {record['bbox']!r}"
            )
        return box
    if from_answer is not None:
        return from_answer
    if answer is None:
        raise BadSample("malformed box", f"no 'bbox' and no box in {answer_field!r}")
    raise BadSample(
        "malformed box", f"{answer_field} {answer!r} is not a box {{<x1><y1><x2><y2>}} and there is no 'bbox'"
    )


def _checked(values: Any, field_name: str) -> list[float]:
    """``values`` as a box (see :func:`check_box`), or BadSample("malformed box") naming the field."""
    try:
        return check_box(values)
    except ValueError as err:
        raise BadSample("malformed box", f"{field_name} {err}") from None


def _as_written(box: list[float]) -> list[int]:
    return [math.floor(v + 0.5) for v in box]  # as format_box writes them (half up)
