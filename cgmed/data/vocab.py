"""The MAT vocabulary: canonical Modalities, Anatomical areas and Tasks, their aliases,
and the task-merge rule of the Med-MAT paper.

Names are matched case-insensitively and ignoring spaces, dashes, underscores and dots,
so ``X-ray``, ``X-Ray``, ``xray`` and ``X ray`` are one modality. Unknown names are an
error that suggests the closest canonical name; a project adds its own elements with
``data.extra_elements`` (for example a PET modality).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from cgmed.errors import ConfigError

ELEMENT_KINDS = ("modality", "area", "task")

#: The task tag of detection subsets: box answers, no options.
DETECTION_TASK = "Det"

# canonical name -> aliases. Abbreviations follow the paper's Table 17.
MODALITIES: dict[str, tuple[str, ...]] = {
    "Co": ("Colposcopy",),
    "CT": ("Computed Tomography",),
    "Der": ("Dermoscopy", "Dermatoscopy"),
    "DP": ("Digital Photography", "Photo", "Photography"),
    "End": ("Endoscopy", "Endoscopic"),
    "FP": ("Fundus Photography", "Fundus Photo", "Fundus Image", "CFP"),
    "Mic": ("Microscopy", "Microscope", "Histopathology", "Pathology"),
    "MRI": ("MR", "Magnetic Resonance", "Magnetic Resonance Imaging"),
    "OCT": ("Optical Coherence Tomography",),
    "US": ("Ultrasound", "Ultrasonography", "Sonography"),
    "X-ray": ("Xray", "X ray", "Radiograph", "Radiography", "CXR"),
}

AREAS: dict[str, tuple[str, ...]] = {
    "Cervix": ("Cervical",),
    "Kidney": ("Kidneys", "Renal"),
    "Lung": ("Lungs", "Pulmonary"),
    "Brain": ("Head",),
    "Intestine": ("Intestines", "Colon", "Bowel", "GI Tract", "Gastrointestinal"),
    "Bladder": (),
    "Fundus": ("Eye Fundus",),
    "Retina": ("Retinal",),
    "Breast": ("Breasts", "Mammary"),
    "Bones": ("Bone", "Skeleton", "Spine", "Knee"),
    "Chest": ("Thorax", "Thoracic"),
    "Skin": ("Dermal",),
    "Mouth": ("Teeth", "Tooth", "Oral", "Dental"),
    "Cell": ("Cells",),
    "Thyroid": (),
    "Liver": ("Hepatic",),
}

# Task tags as the paper's CG tables name them.
TASKS: dict[str, tuple[str, ...]] = {
    "Quality": ("Quality Identification", "Quality Evaluation", "Quality Assessment"),
    "COVID": ("COVID-19", "COVID Diagnosis", "Covid19"),
    "Cancer": ("Cancer Diagnosis", "Tumor", "Tumour", "Malignancy"),
    "State": ("Condition", "Status"),
    "Level": ("Level Identification", "Grade", "Grading", "Severity", "Degree"),
    "Diseases": ("Disease", "Multiple Classification", "Multi-disease"),
    "Recognition": ("Cell Type", "Cell Recognition", "Type"),
    "Det": ("Detection", "Localization", "Grounding"),
    "Seg": ("Segmentation",),
}

# Paper, Section 3: COVID diagnosis and cancer diagnosis ask "is the patient in a diseased
# state?", so for CG they also count as State (Table 3 rows 2, 15, 17 rely on this).
DEFAULT_TASK_MERGE: dict[str, list[str]] = {"COVID": ["State"], "Cancer": ["State"]}

_BUILTIN = {"modality": MODALITIES, "area": AREAS, "task": TASKS}


def _norm(name: str) -> str:
    return re.sub(r"[\s\-_./]+", "", str(name)).lower()


@dataclass
class Vocabulary:
    """Canonical MAT elements plus aliases; resolves free-form names to canonical ones."""

    extra: Mapping[str, Iterable[str]] = field(default_factory=dict)
    task_merge: Mapping[str, Iterable[str]] = field(default_factory=lambda: dict(DEFAULT_TASK_MERGE))

    def __post_init__(self) -> None:
        self._lookup: dict[str, dict[str, str]] = {}
        self._canonical: dict[str, list[str]] = {}
        for element_kind in ELEMENT_KINDS:
            table = dict(_BUILTIN[element_kind])
            for name in self.extra.get(element_kind, ()) or ():
                table.setdefault(str(name), ())
            lookup: dict[str, str] = {}
            for canon, aliases in table.items():
                for alias in (canon, *aliases):
                    lookup.setdefault(_norm(alias), canon)
            self._lookup[element_kind] = lookup
            self._canonical[element_kind] = list(table)
        unknown_kinds = set(self.extra) - set(ELEMENT_KINDS)
        if unknown_kinds:
            raise ConfigError(
                f"data.extra_elements.{sorted(unknown_kinds)[0]}",
                "unknown element kind",
                f"use one of {list(ELEMENT_KINDS)}",
            )
        merged: dict[str, frozenset[str]] = {}
        for tag, also in dict(self.task_merge).items():
            canon_tag = self.canonical("task", tag, where="data.task_merge")
            merged[canon_tag] = frozenset(
                self.canonical("task", t, where=f"data.task_merge.{tag}") for t in also
            )
        self._merge = merged

    def names(self, element_kind: str) -> list[str]:
        """The canonical names of ``element_kind`` (``modality``, ``area`` or ``task``)."""
        return list(self._canonical[element_kind])

    def find(self, element_kind: str, name: str) -> str | None:
        """Canonical name for ``name`` or None when unknown."""
        return self._lookup[element_kind].get(_norm(name))

    def canonical(self, element_kind: str, name: str, where: str) -> str:
        """Canonical name for ``name``; unknown names raise with a suggestion.

        ``where`` names the config key or file/record the name came from.
        """
        if element_kind not in self._lookup:
            raise ConfigError(
                where, f"unknown MAT element kind {element_kind!r}", f"use one of {list(ELEMENT_KINDS)}"
            )
        found = self.find(element_kind, name)
        if found is not None:
            return found
        close = difflib.get_close_matches(str(name), self._canonical[element_kind], n=1, cutoff=0.5)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(
            where,
            f"unknown {element_kind} {name!r}",
            f"{hint}known: {', '.join(self._canonical[element_kind])}; "
            f"add new ones with data.extra_elements.{element_kind}=[...]",
        )

    def task_elements(self, tag: str) -> frozenset[str]:
        """The task elements a task tag counts as, after merging (``COVID`` -> {COVID, State})."""
        return frozenset({tag}) | self._merge.get(tag, frozenset())

    def share_task(self, a: str, b: str) -> bool:
        return bool(self.task_elements(a) & self.task_elements(b))
