"""Multiple-choice questions: building them from labels and parsing the released ones.

The released Med-MAT prompts are the instruction, one ``A: text`` line per option and the
trailing sentence ``ANSWER_SUFFIX``; the paper's Figure 8 writes ``A. text``. Both parse.

A label may be a **label set**: a multi-label record's answer is its findings joined by commas
(``"Effusion, Nodule"``), in any order. :func:`canonical_label` gives a label its one spelling
(order-free); every place that compares or counts labels (sampling, counts, options, the
answer check) goes through it, so ``"Nodule, Effusion"`` and ``"Effusion, Nodule"`` are one label.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

LETTERS = "ABCDEFGHIJ"
ANSWER_SUFFIX = "Answer with the option's letter from the given choices directly."
_OPTION_LINE = re.compile(r"^\s*([A-J])\s*[:.]\s?(.*)$")

# How the prompt names a modality / area (the canonical names are abbreviations).
MODALITY_TEXT = {
    "Co": "colposcopy",
    "CT": "CT",
    "Der": "dermoscopy",
    "DP": "photograph",
    "End": "endoscopy",
    "FP": "fundus photograph",
    "Mic": "microscopy",
    "MRI": "MRI",
    "OCT": "OCT",
    "US": "ultrasound",
    "X-ray": "X-ray",
}

# At least six instructions per task (paper 3.4: six human-written instructions per subset;
# the questions mention modality and area).
TEMPLATES: dict[str, list[str]] = {
    "Quality": [
        "How would you rate the image quality of this {m} image of the {a}?",
        "Assess the quality of this {a} {m} image.",
        "What is the quality level of this {m} picture of the {a}?",
        "Evaluate this {a} {m} image: is its quality good enough for diagnosis?",
        "Judge the acquisition quality of the {m} image of the {a} shown here.",
        "Which quality grade fits this {m} image of the {a}?",
    ],
    "COVID": [
        "This is a {a} {m} image. Does it show signs of COVID-19?",
        "Look at this {m} scan of the {a}. What is the COVID-19 status?",
        "Based on this {a} {m} image, which diagnosis fits best?",
        "What does this {m} image of the {a} indicate regarding COVID-19?",
        "Classify this {a} {m} image for COVID-19 infection.",
        "Examine the {m} image of the {a}. Which finding is present?",
    ],
    "Cancer": [
        "This is a {a} {m} image. Is there evidence of cancer?",
        "Look at this {m} image of the {a}. What is the diagnosis?",
        "Does this {a} {m} image show a malignant finding?",
        "Which diagnosis does this {m} scan of the {a} support?",
        "Examine this {a} {m} image and identify the tumour status.",
        "What is the cancer status shown in this {m} image of the {a}?",
    ],
    "State": [
        "This is a {a} {m} image. What's the risk status?",
        "What condition does this {m} image of the {a} show?",
        "Is the {a} in this {m} image normal or abnormal?",
        "Look at this {a} {m} scan and state the patient's condition.",
        "Which state best describes the {a} in this {m} image?",
        "Examine the {m} image of the {a}. What is its status?",
    ],
    "Level": [
        "What level of severity does this {a} {m} image show?",
        "Grade this {m} image of the {a}.",
        "Which grade best describes the finding in this {a} {m} image?",
        "Look at this {m} image of the {a} and identify the level.",
        "Assess the degree of abnormality in this {a} {m} image.",
        "What is the severity grade of the {a} in this {m} image?",
    ],
    "Diseases": [
        "Which disease does this {a} {m} image show?",
        "Look at this {m} image of the {a} and state which condition it shows.",
        "What is the most likely diagnosis for this {a} {m} image?",
        "Identify the abnormality in this {m} scan of the {a}.",
        "Which condition is visible in this {a} {m} image?",
        "Examine this {m} image of the {a}. What disease is present?",
    ],
    "Recognition": [
        "What type of cell is shown in this {m} image?",
        "Identify the cell type in this {a} {m} image.",
        "Which category does the {a} in this {m} image belong to?",
        "Look at this {m} image and recognise the {a} type.",
        "Classify the {a} shown in this {m} image.",
        "What kind of {a} does this {m} image contain?",
    ],
}
GENERIC_TEMPLATES = [
    "Which finding does this {a} {m} image show?",
    "Look at this {m} image of the {a}. Which option is correct?",
    "What does this {a} {m} image show?",
    "Examine this {m} image of the {a} and choose the right answer.",
    "Based on this {a} {m} image, which label applies?",
    "Classify this {m} image of the {a}.",
]
DETECTION_TEMPLATES = [
    "Where is the {f} in this {a} {m} image? Answer with its bounding box.",
    "Locate the {f} in this {m} image of the {a}.",
    "Give the bounding box of the {f} in this {a} {m} image.",
    "Find the {f} in this {m} scan of the {a} and output its box.",
    "Detect the {f} in this {a} {m} image.",
    "Mark the region of the {f} in this {m} image of the {a} with a box.",
]


def instruction(task: str, modality: str, area: str, rng: random.Random) -> str:
    """One of the task's instructions, naming the modality and area."""
    templates = TEMPLATES.get(task, GENERIC_TEMPLATES)
    text = rng.choice(templates)
    return text.format(m=MODALITY_TEXT.get(modality, modality), a=area.lower())


def detection_instruction(finding: str, modality: str, area: str, rng: random.Random) -> str:
    """One of ``DETECTION_TEMPLATES``, naming the finding to box, the modality and the area."""
    text = rng.choice(DETECTION_TEMPLATES)
    return text.format(f=finding, m=MODALITY_TEXT.get(modality, modality), a=area.lower())


def label_parts(label: str) -> tuple[str, ...]:
    """The individual labels of a (comma-joined) label, in canonical order: each trimmed, inner
    whitespace collapsed, sorted case-insensitively, a repeat (in any case) kept once."""
    parts: dict[str, str] = {}
    for raw in str(label).split(","):
        text = " ".join(raw.split())
        if text:
            parts.setdefault(text.casefold(), text)
    return tuple(sorted(parts.values(), key=lambda p: (p.casefold(), p)))


def canonical_label(label: str) -> str:
    """A label's one spelling: its individual labels (:func:`label_parts`) joined by ``", "``.

    ``"Nodule, Effusion"`` -> ``"Effusion, Nodule"``; a single label only loses stray spaces."""
    return ", ".join(label_parts(label))


def is_label_set(label: str) -> bool:
    """True for a multi-label record's label: two or more individual labels."""
    return len(label_parts(label)) > 1


def make_options(
    label: str,
    labels: Sequence[str],
    rng: random.Random,
    max_options: int = 4,
    order: str = "shuffle",
) -> tuple[list[str], str]:
    """Options for ``label``: distractors drawn from the subset's other labels.

    Labels are compared and written canonically (:func:`canonical_label`): one label set is
    never offered twice, and the right option is ``canonical_label(label)``.
    ``order="shuffle"`` puts the options in random order; ``"sorted"`` keeps them sorted
    by text (a fixed order makes the letter <-> label mapping learnable from scratch).
    Returns (options, answer letter).
    """
    label = canonical_label(label)
    others = sorted({canonical_label(x) for x in labels} - {label})
    if not others:
        raise ValueError(f"label {label!r} has no other label in its subset to draw distractors from")
    k = min(max_options, len(others) + 1)
    options = [label, *rng.sample(others, k - 1)]
    if order == "sorted":
        options.sort(key=str.lower)
    elif order == "shuffle":
        rng.shuffle(options)
    else:
        raise ValueError(f"unknown option order {order!r}; use 'shuffle' or 'sorted'")
    return options, LETTERS[options.index(label)]


def format_question(instruction_text: str, options: Sequence[str], sep: str = ":") -> str:
    """The full prompt: the instruction, one ``A: text`` line per option, ``ANSWER_SUFFIX``."""
    lines = [instruction_text.strip()]
    lines += [f"{LETTERS[i]}{sep} {text}" for i, text in enumerate(options)]
    lines.append(ANSWER_SUFFIX)
    return "\n".join(lines)


def parse_question_choice(text: str) -> tuple[str, list[str]]:
    """Split a released ``Question-choice`` into (instruction, options).

    Options are the consecutive lines ``A: x`` / ``A. x`` starting at ``A``; the trailing
    answer sentence is dropped. Raises ValueError describing what is wrong.
    """
    lines = text.replace("\r\n", "\n").split("\n")
    start = None
    for i, line in enumerate(lines):
        if line.lstrip()[:1] == "A":
            m = _OPTION_LINE.match(line)
            if m and m.group(1) == "A":
                start = i
                break
    if start is None:
        raise ValueError("no option lines ('A: ...' or 'A. ...') found in Question-choice")
    options: list[str] = []
    for line in lines[start:]:
        want = LETTERS[len(options)] if len(options) < len(LETTERS) else None
        if want and line[:1] == want and line[1:2] in (":", ".") and len(line) > 2:
            options.append(line[2:].strip())  # fast path for the released "A: x" layout
            continue
        m = _OPTION_LINE.match(line)
        if not m or m.group(1) != want:
            break
        options.append(m.group(2).strip())
    rest = [ln for ln in lines[start + len(options) :] if ln.strip()]
    if rest and rest != [ANSWER_SUFFIX] and len(rest) > 1:
        raise ValueError(f"unexpected text after the options: {rest[0][:60]!r}")
    if not 2 <= len(options) <= 4:
        raise ValueError(f"expected 2 to 4 options, found {len(options)}")
    if any(not o for o in options):
        raise ValueError("an option is empty")
    return "\n".join(lines[:start]).strip(), options


def same_label(a: str, b: str) -> bool:
    """Label equality tolerant of case, spacing and the order of comma-joined multi-labels
    (:func:`canonical_label`, compared case-insensitively)."""
    return a == b or canonical_label(a).casefold() == canonical_label(b).casefold()
