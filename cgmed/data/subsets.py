"""The 53 Med-MAT subsets (paper Table 17, README of FreedomIntelligence/Med-MAT).

``status``: ``ID`` subsets have at least 3,000 training samples (paper Table 1);
``OOD`` subsets have fewer and are test-only in the pilot study (Table 2); ``det``/``seg``
subsets (38-53) are the detection/segmentation part, not in either table.
``tag`` is the task name used by the paper's CG tables (Table 3 etc.). Most tags are the
paper's own (a table names the triplet, or the release names the task); the few that are
inferences carry their reason in ``tag_reason`` (:data:`INFERRED_TAG_REASONS`), which the
catalog prints. ``docs/catalog.md`` discusses them and the Figure 4 ratios they give.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

#: The file beside a dataset's subset files that declares the MAT triplet of non-Med-MAT subsets.
CATALOG_FILE = "cgmed_catalog.json"


@dataclass(frozen=True)
class SubsetInfo:
    """One MAT subset: its id and triplet, the paper's task tag and status."""

    id: str
    modality: str
    area: str
    task: str  # CG tag, e.g. "COVID"; the unmerged task element
    name: str  # the task as the release names it
    status: str  # ID | OOD | det | seg
    sources: tuple[int, ...] = ()
    derived_from: str | None = None  # the parent subset of a derived subset (data.derived)
    tag_reason: str | None = None  # why the task tag was chosen, when it is an inference

    @property
    def kind(self) -> str:
        return {"det": "detection", "seg": "segmentation"}.get(self.status, "classification")

    @property
    def triplet(self) -> tuple[str, str, str]:
        return (self.modality, self.area, self.task)

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "modality": self.modality,
            "area": self.area,
            "task": self.task,
            "name": self.name,
            "status": self.status,
            **({"derived_from": self.derived_from} if self.derived_from else {}),
        }

    def describe(self) -> str:
        return f"{self.id} ({self.modality} {self.area} {self.task})"


@dataclass
class LabelShare:
    """One of ``parts`` equal, disjoint shares of a label's samples (per split, seeded)."""

    label: str
    part: int = 0
    parts: int = 2


@dataclass
class DerivedSubset:
    """A subset made from part of another (``data.derived``): some of its labels, a share of one
    label's samples, or the samples of some source datasets (``data-no``).

    The paper's Table 8 splits subset 28 (X-ray Lung: Normal / COVID / Pneumonia) into X-ray
    COVID (half the Normal images + COVID) and X-ray Pneumonia (the other half + Pneumonia), so
    that COVID and Pneumonia become separate task elements.
    """

    id: str
    source: str  # the parent subset id
    task: str  # the new subset's task element (a new tag goes into data.extra_elements.task)
    labels: list[str] = field(default_factory=list)  # keep only these labels (empty: all)
    share: LabelShare | None = None
    data_no: list[str] = field(default_factory=list)  # keep only these source datasets (empty: all)
    modality: str | None = None  # default: the parent's
    area: str | None = None  # default: the parent's
    name: str = ""


#: The task tags no paper table or release name settles, and why each was chosen.
INFERRED_TAG_REASONS: dict[str, str] = {
    "12": (
        "inferred: the release calls it a cancer *degree* task (no tumor lesion, low-grade and "
        "high-grade carcinoma, non-suspicious tissue), graded like subset 19, Prostate Cancer Degree, "
        "which Table 3 calls Mic-Cell Level; no paper table names an End Bladder subset"
    ),
    "15": (
        "inferred from the release's name (multi-label eye diseases), not its own 'Multiple "
        "Classification' task; shares FP Fundus Diseases with subset 14; no paper table tells them apart"
    ),
    "20": (
        "inferred: its multi-label options are blood cell types ('Eosinophil, lymphocyte'), what "
        "subset 18, Table 3's Mic-Cell Recognition, classifies; no paper table names subset 20"
    ),
    "33": (
        "inferred from the release's name 'Multi-labels Diseases' (Human Protein Atlas, labels are "
        "places in the cell), not its own 'Multiple Classification' task; Table 13's target "
        "Mic-Cell Diseases can only be this subset"
    ),
    "36": (
        "inferred: spinal lesion types (implant, foraminal stenosis, osteophytes, other lesions), "
        "like subset 27, Vertebrae Diseases, which Table 3 calls Bones Diseases"
    ),
    "37": (
        "inferred from the release's name 'Multi-labels Diseases' (VinDr-Mammo: normal, asymmetry, "
        "nipple retraction, mass), not its own 'Multiple Classification' task; Table 3's "
        "'Breast Diseases' is this subset or 29"
    ),
}


def _s(subset_id, modality, area, tag, name, status, sources=()):
    """A row of the table below: one Med-MAT subset and its source datasets (``data-no``)."""
    return SubsetInfo(
        subset_id,
        modality,
        area,
        tag,
        name,
        status,
        tuple(sources),
        tag_reason=INFERRED_TAG_REASONS.get(subset_id),
    )


MEDMAT_SUBSETS: dict[str, SubsetInfo] = {
    s.id: s
    for s in [
        _s("01", "Co", "Cervix", "Quality", "Cervical Picture Quality Evaluation", "OOD", [1]),
        _s("02", "CT", "Kidney", "Diseases", "Kidney Diseases Classification", "ID", [2]),
        _s("03", "CT", "Lung", "COVID", "COVID-19 Classification", "ID", [3, 4, 6]),
        _s("04", "CT", "Lung", "Cancer", "Lung Cancer Classification", "OOD", [5]),
        _s("05", "CT", "Brain", "State", "Brain Hemorrhage Classification", "OOD", [7]),
        _s("06", "CT", "Brain", "Cancer", "Brain Cancer Classification", "OOD", [8]),
        _s("07", "Der", "Skin", "Cancer", "Melanoma Type Classification", "ID", [10]),
        _s(
            "08",
            "Der",
            "Skin",
            "Diseases",
            "Skin Diseases Classification",
            "ID",
            [9, 11, 12, 13, 14, 15, 71, 72, 74],
        ),
        _s("09", "DP", "Mouth", "State", "Teeth Condition Classification", "ID", [16]),
        _s("10", "DP", "Mouth", "Cancer", "Oral Cancer Classification", "OOD", [17]),
        _s("11", "End", "Intestine", "Level", "Intestine Cleanliness Level", "ID", [18]),
        _s("12", "End", "Bladder", "Level", "Cancer Degree Classification", "OOD", [19]),
        _s("13", "End", "Intestine", "Diseases", "Intestine Diseases Classification", "ID", [20]),
        _s(
            "14",
            "FP",
            "Fundus",
            "Diseases",
            "Eye Diseases Classification",
            "ID",
            [21, 22, 23, 26, 27, 28, 31, 32, 75],
        ),
        _s(
            "15",
            "FP",
            "Fundus",
            "Diseases",
            "Multiple-labels Eye Diseases Classification",
            "ID",
            [24, 25, 68],
        ),
        _s("16", "FP", "Fundus", "Level", "Blindness Level", "ID", [29]),
        _s("17", "FP", "Fundus", "Quality", "Retinal Images Quality Evaluation", "OOD", [30]),
        _s(
            "18",
            "Mic",
            "Cell",
            "Recognition",
            "Cell Type Classification",
            "ID",
            [33, 36, 37, 38, 39, 40, 41, 43, 65, 70],
        ),
        _s("19", "Mic", "Cell", "Level", "Prostate Cancer Degree Classification", "ID", [34]),
        _s("20", "Mic", "Cell", "Recognition", "Multiple-labels Blood Cell Classification", "OOD", [35]),
        _s("21", "Mic", "Cell", "Cancer", "Cancer Classification", "ID", [42, 67]),
        _s("22", "MRI", "Brain", "Cancer", "Head Diseases Classification", "ID", [44, 45]),
        _s("23", "OCT", "Retina", "Diseases", "Retina Diseases Classification", "ID", [46, 47]),
        _s("24", "US", "Breast", "Cancer", "Breast Cancer Classification", "OOD", [48]),
        _s("25", "X-ray", "Bones", "Level", "Degree Classification of Knee", "ID", [49, 53]),
        _s("26", "X-ray", "Bones", "State", "Fractured Classification", "ID", [50, 51]),
        _s("27", "X-ray", "Bones", "Diseases", "Vertebrae Diseases Classification", "OOD", [52]),
        _s(
            "28",
            "X-ray",
            "Lung",
            "COVID",
            "COVID-19 and Pneumonia Classification",
            "ID",
            [54, 55, 56, 57, 60, 62, 81],
        ),
        _s("29", "X-ray", "Breast", "Diseases", "Breast Diseases Classification", "OOD", [58, 78]),
        _s("30", "X-ray", "Lung", "Diseases", "Tuberculosis Classification", "ID", [59, 79]),
        _s(
            "31",
            "X-ray",
            "Chest",
            "Diseases",
            "Multiple-labels Chest Classification",
            "ID",
            [61, 73, 76, 77, 80, 85, 87],
        ),
        _s("32", "X-ray", "Brain", "Cancer", "Tumor Classification", "ID", [63]),
        _s("33", "Mic", "Cell", "Diseases", "Multi-labels Diseases", "ID", [84]),
        _s("34", "FP", "Fundus", "Level", "Level Identification", "OOD", [66]),
        _s("35", "X-ray", "Bones", "Level", "Level Identification", "ID", [69]),
        _s("36", "X-ray", "Bones", "Diseases", "Spinal lesion Classification", "ID", [86]),
        _s("37", "X-ray", "Breast", "Diseases", "Multi-labels Diseases", "ID", [82]),
        _s("38", "Der", "Skin", "Det", "Lesion Det/Seg", "det", [88, 89, 90, 91]),
        _s("39", "End", "Intestine", "Det", "PolyP Det/Seg", "det", [92, 93]),
        _s("40", "End", "Intestine", "Det", "Surgical Procedures Det/Seg", "det", [94]),
        _s("41", "End", "Intestine", "Det", "Multi-labels Det/Seg", "det", [95]),
        _s("42", "Mic", "Cell", "Det", "Cancer Cell Det/Seg", "det", [96]),
        _s("43", "US", "Chest", "Det", "Cancer Det/Seg", "det", [97]),
        _s("44", "US", "Thyroid", "Det", "Thyroid Nodule Region Det/Seg", "det", [98]),
        _s("45", "MRI", "Intestine", "Det", "Multi-labels Det/Seg", "det", [103]),
        _s("46", "MRI", "Liver", "Det", "Liver Det/Seg", "det", [104, 105]),
        _s("47", "X-ray", "Lung", "Det", "Lung Det/Seg", "det", [99]),
        _s("48", "X-ray", "Lung", "Det", "Pneumothorax Det/Seg", "det", [106]),
        _s("49", "X-ray", "Bones", "Det", "Spinal Anomaly Det", "det", [100]),
        _s("50", "X-ray", "Chest", "Det", "Multi-labels Det", "det", [101, 102]),
        _s("51", "FP", "Fundus", "Seg", "Vessel Seg", "seg", [107]),
        _s("52", "FP", "Fundus", "Seg", "Optic Disc and Cup Seg", "seg", [108]),
        _s("53", "FP", "Fundus", "Seg", "Optic Disc Seg", "seg", [109]),
    ]
}


def normalize_subset_id(value: str | int) -> str:
    """``4``, ``"4"``, ``"04"``, ``"Subset--04"`` -> ``"04"``; other ids are kept as written."""
    text = str(value).strip()
    m = re.match(r"(?i)^subset[-_ ]*(.+)$", text)
    if m:
        text = m.group(1)
    return text.zfill(2) if text.isdigit() and len(text) < 2 else text
