"""Validation of one conversation record (LLaVA / ShareGPT style with an ``<image>`` tag and MAT fields).

A human turn that lists options (``A: x`` lines) is used as is, with the gpt answer a letter or an
option's text; one without options is label-only (the split builder writes its multiple-choice
question). A ``Det`` record without options is a box record: the gpt answer ``{<x1><y1><x2><y2>}``
and/or ``bbox``, ``label`` naming the finding (default ``object``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from cgmed.data.boxes import format_box
from cgmed.data.choices import LETTERS, parse_question_choice, same_label
from cgmed.data.source.bad import BadSample
from cgmed.data.source.detection import record_box
from cgmed.data.source.images import safe_relpath
from cgmed.data.subsets import normalize_subset_id
from cgmed.data.vocab import DETECTION_TASK, ELEMENT_KINDS, Vocabulary

_IMAGE_TAG = re.compile(r"<image>\s*", re.IGNORECASE)
_HUMAN = {"human", "user"}
_ASSISTANT = {"gpt", "assistant", "model"}


@dataclass
class ConversationRecord:
    """One validated conversation record, as the index and a Sample need it."""

    subset: str
    modality: str
    area: str
    task: str
    image: str  # relative to the data root
    instruction: str
    options: list[str]  # empty for label-only and box records
    answer: str  # the option letter, the box as format_box writes it, or "" (label-only)
    label: str
    split: str | None  # "train", "test", or None (the 9:1 hash rule decides)
    id: str  # "" when the record has none
    box: list[float] | None
    data_no: str | None  # the source dataset, as Med-MAT's data-no (data.derived[].data_no filters on it)

    @property
    def triplet(self) -> tuple[str, str, str]:
        return (self.modality, self.area, self.task)


def parse_conversation_record(record: Any, vocab: Vocabulary) -> ConversationRecord:
    """Validate one record; MAT names are resolved with ``vocab``. Raises BadSample."""
    if not isinstance(record, dict):
        raise BadSample("malformed record", "expected a JSON object")
    modality, area, task = _mat_triplet(record, vocab)
    image = safe_relpath(record.get("image", ""))
    human, reply = _turns(record)
    text = _IMAGE_TAG.sub("", human).strip()
    reply = reply.strip()
    try:
        instruction, options = parse_question_choice(text)
    except ValueError:
        instruction, options = text, []
    box = None
    if options:
        answer = _option_letter(options, reply)
        label = options[LETTERS.index(answer)]
    else:
        answer, label = "", str(record.get("label", reply)).strip()
        if not label:
            raise BadSample("malformed record", "empty answer and no label")
        if task == DETECTION_TASK:
            box = record_box(record, reply, "answer")
            answer, label = format_box(box), str(record.get("label") or "object").strip()
    subset = str(record.get("subset") or f"{modality}_{area}_{task}")
    data_no = record.get("data_no", record.get("data-no"))
    return ConversationRecord(
        subset=normalize_subset_id(subset),
        modality=modality,
        area=area,
        task=task,
        image=image,
        instruction=instruction,
        options=options,
        answer=answer,
        label=label,
        split=_split(record),
        id=str(record.get("id", "")),
        box=box,
        data_no=None if data_no is None else str(data_no),
    )


def _mat_triplet(record: dict[str, Any], vocab: Vocabulary) -> tuple[str, str, str]:
    """The record's canonical (modality, area, task)."""
    names = []
    for element_kind in ELEMENT_KINDS:
        if element_kind not in record:
            raise BadSample("malformed record", f"missing MAT field {element_kind!r}")
        name = vocab.find(element_kind, str(record[element_kind]))
        if name is None:
            raise BadSample(
                "unknown MAT element",
                f"unknown {element_kind} {record[element_kind]!r} (add it with data.extra_elements)",
            )
        names.append(name)
    modality, area, task = names
    return modality, area, task


def _turns(record: dict[str, Any]) -> tuple[str, str]:
    """The first human turn and the assistant turn that follows it."""
    turns = record.get("conversations", record.get("messages"))
    if not isinstance(turns, list) or len(turns) < 2:
        raise BadSample(
            "malformed record", "needs 'conversations' (or 'messages') with a human and a gpt turn"
        )
    human = assistant = None
    for turn in turns:
        if not isinstance(turn, dict):
            raise BadSample("malformed record", "a turn is not an object")
        speaker = str(turn.get("from", turn.get("role", ""))).lower()
        text = turn.get("value", turn.get("content"))
        if speaker in _HUMAN and human is None:
            human = text
        elif speaker in _ASSISTANT and human is not None and assistant is None:
            assistant = text
    if not isinstance(human, str) or not isinstance(assistant, str):
        raise BadSample("malformed record", "no human turn followed by a gpt/assistant turn")
    return human, assistant


def _option_letter(options: list[str], reply: str) -> str:
    """The letter of the option the reply names, by letter or by the option's text."""
    letter = reply.rstrip(".").upper()
    if len(letter) == 1 and letter in LETTERS:
        if letter not in LETTERS[: len(options)]:
            raise BadSample("answer letter points at no option", f"answer {reply!r} points at no option")
        return letter
    hits = [i for i, option in enumerate(options) if same_label(option, reply)]
    if len(hits) != 1:
        raise BadSample("answer letter points at no option", f"answer {reply!r} matches no option")
    return LETTERS[hits[0]]


def _split(record: dict[str, Any]) -> str | None:
    split = str(record.get("split", "")).lower() or None
    if split not in (None, "train", "test"):
        raise BadSample("malformed record", f"split {record['split']!r} is neither train nor test")
    return split
