"""Validation of one Med-MAT release record: a multiple-choice record or a detection (box) record.

Detection subsets (task ``Det``) hold box records: no ``Question-choice``, the box in ``bbox``
(``[x1, y1, x2, y2]`` on a 0-100 grid) and/or in ``Answer`` (``{<x1><y1><x2><y2>}``). They
become Samples with the instruction as ``question``, no options, the box string as ``answer``,
the box in ``box`` and the finding (``caption``) as ``label``.

A multiple-choice record's QA target is ``Answer-choice`` (the letter) and ``Answer`` (the label
text): the option the letter points at must be ``Answer`` (order-free for comma-joined
multi-label sets). ``caption`` is the source dataset's own label, which the release's hand
clustering may rename ("COVID-19 positive" answered "COVID"); it is kept as metadata and a
difference is a note, never a rejection.
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
    caption: str | None = None  # the source dataset's label when it differs from ``label``


def parse_release_record(info: SubsetInfo, record: Any) -> ReleaseRecord:
    """A record of subset ``info``, validated as a box record or a multiple-choice one; else BadSample."""
    if is_detection_record(info, record):
        image, instruction, box, finding = parse_detection_record(record)
        return ReleaseRecord(image, instruction, [], format_box(box), finding, box)
    image, instruction, options, letter = parse_medmat_record(record)
    label = options[LETTERS.index(letter)]
    return ReleaseRecord(
        image, instruction, options, letter, label, caption=_differing_caption(record, label)
    )


def _differing_caption(record: dict[str, Any], label: str) -> str | None:
    """The record's ``caption`` when it names another label than ``label`` (None: absent or the same)."""
    caption = record.get("caption")
    if caption is None or same_label(label, str(caption)):
        return None
    return str(caption)


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
    _require_fields(record, ("id", "image", "Question-choice", "Answer-choice", "Answer"))
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
    if not same_label(answer_text, str(record["Answer"])):
        raise BadSample(
            "Answer-choice disagrees with Answer",
            f"Answer-choice {letter} is {answer_text!r} but Answer is {record['Answer']!r}",
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
