"""Validation of one Med-MAT release record: a multiple-choice record or a detection (box) record.

Detection subsets (task ``Det``) hold box records: no ``Question-choice``, the box in ``bbox``
(``[x1, y1, x2, y2]`` on a 0-100 grid) and/or in ``Answer`` (``{<x1><y1><x2><y2>}``). They
become Samples with the instruction as ``question``, no options, the box string as ``answer``,
the box in ``box`` and the finding (``caption``) as ``label``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cgmed.data.boxes import format_box
from cgmed.data.choices import LETTERS, parse_question_choice, same_label
from cgmed.data.source.bad import BadSample
from cgmed.data.source.detection import record_box
from cgmed.data.source.images import safe_relpath
from cgmed.data.subsets import SubsetInfo
from cgmed.data.vocab import DETECTION_TASK


@dataclass
class ReleaseRecord:
    """One validated release record, as a Sample needs it."""

    image: str  # relative to the data root
    instruction: str
    options: list[str]  # empty for a box record
    answer: str  # the option letter, or the box as format_box writes it
    label: str  # the answer's option text, or the finding of a box record
    box: list[float] | None = None


def parse_release_record(info: SubsetInfo, record: Any) -> ReleaseRecord:
    """A record of subset ``info``, validated as a box record or a multiple-choice one; else BadSample."""
    if is_detection_record(info, record):
        image, instruction, box, finding = parse_detection_record(record)
        return ReleaseRecord(image, instruction, [], format_box(box), finding, box)
    image, instruction, options, letter = parse_medmat_record(record)
    return ReleaseRecord(image, instruction, options, letter, options[LETTERS.index(letter)])


def is_detection_record(info: SubsetInfo, record: Any) -> bool:
    """Whether a record of subset ``info`` is a box record: a Det subset's record without options."""
    return info.task == DETECTION_TASK and not (isinstance(record, dict) and "Question-choice" in record)


def _require_fields(record: Any, keys: tuple[str, ...]) -> None:
    if not isinstance(record, dict):
        raise BadSample("malformed record", f"expected a JSON object, got {type(record).__name__}")
    for key in keys:
        if key not in record:
            raise BadSample("malformed record", f"missing field {key!r}")


def parse_medmat_record(record: Any) -> tuple[str, str, list[str], str]:
    """Validate one multiple-choice record; returns (image relpath, instruction, options, answer letter)."""
    _require_fields(record, ("id", "caption", "image", "Question-choice", "Answer-choice"))
    image = safe_relpath(record["image"])
    try:
        instruction, options = parse_question_choice(str(record["Question-choice"]))
    except ValueError as err:
        raise BadSample("malformed record", f"Question-choice: {err}") from None
    letter = str(record["Answer-choice"]).strip().rstrip(".:").upper()
    if len(letter) != 1 or letter not in LETTERS[: len(options)]:
        raise BadSample(
            "answer letter points at no option",
            f"Answer-choice {record['Answer-choice']!r} points at no option "
            f"(options are A-{LETTERS[len(options) - 1]})",
        )
    answer_text = options[LETTERS.index(letter)]
    if not same_label(answer_text, str(record["caption"])):
        raise BadSample(
            "answer disagrees with caption",
            f"Answer-choice {letter} is {answer_text!r} but caption is {record['caption']!r}",
        )
    return image, instruction, options, letter


def parse_detection_record(record: Any) -> tuple[str, str, list[float], str]:
    """Validate one detection record; returns (image relpath, instruction, box, finding).

    The box comes from ``bbox``, else from ``Answer``; with both, they must agree (``Answer``
    is ``bbox`` written with ``format_box``, i.e. rounded to integers).
    """
    _require_fields(record, ("id", "caption", "image", "Question"))
    image = safe_relpath(record["image"])
    caption = str(record["caption"]).strip()
    instruction = str(record["Question"]).strip()
    if not caption or not instruction:
        raise BadSample("malformed record", "empty 'caption' (the finding) or 'Question'")
    answer = str(record["Answer"]) if "Answer" in record else None
    return image, instruction, record_box(record, answer, "Answer"), caption
