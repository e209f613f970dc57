"""Which subsets a synthetic world holds and where their files go.

The Med-MAT release layout (``Aggregated_Subsets/``, ``med-mat/``, the catalog format), each
subset's name and image folder, and the two subset lists of ``synth.layout``: the ``grid`` of
modalities x areas x tasks, and the ``medmat`` stand-in for the real release's subsets (real
ids, triplets and status, synthetic labels per task tag).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cgmed.data.subsets import MEDMAT_SUBSETS
from cgmed.data.vocab import DETECTION_TASK

CATALOG_FORMAT = "cgmed-catalog/1"
SUBSETS_DIR = "Aggregated_Subsets"
IMAGES_DIR = "med-mat"
# Every image folder the generator writes starts with it: that is how a rerun finds its own output.
FOLDER_PREFIX = "Synth "

# Labels of the ``medmat`` layout, one list per CG task tag, so every subset with a tag shows the
# same findings (``findings``: one finding per label and task). Under these rules the
# diseased label of State, COVID and Cancer (Abnormal, COVID-19, Tumor) is the same yellow disc,
# which mirrors the paper's merge of COVID and Cancer into State; Diseases shares Tumor with
# Cancer; Level draws 1-4 dots; Recognition and Quality draw distinct shapes.
MEDMAT_TASK_LABELS: dict[str, list[str]] = {
    "Quality": ["Good", "Usable", "Reject"],
    "COVID": ["Normal", "COVID-19", "Pneumonia"],
    "Cancer": ["Normal", "Tumor"],
    "State": ["Normal", "Abnormal"],
    "Level": ["Level 0", "Level 1", "Level 2", "Level 3"],
    "Diseases": ["Normal", "Cyst", "Stone", "Tumor"],
    "Recognition": ["Lymphocyte", "Neutrophil", "Eosinophil"],
}
# The classification subsets of Med-MAT (01-37): the ones the medmat layout writes.
MEDMAT_LAYOUT_IDS = tuple(sid for sid, info in MEDMAT_SUBSETS.items() if info.status in ("ID", "OOD"))
# The detection subsets of the paper's classification <-> detection experiments (Table 5 targets
# 38 and 39; Tables 13/14 sources 38, 42, 45, 47, 49), written by the medmat layout only with
# synth.medmat_detection: true. One finding each, named after what the source datasets box;
# none has a designed look, so each draws the first mass look (the yellow disc, as Tumor).
MEDMAT_DETECTION_LABELS: dict[str, list[str]] = {
    "38": ["Lesion"],
    "39": ["Polyp"],
    "42": ["Cancer cell"],
    "45": ["Lesion"],
    "47": ["Nodule"],
    "49": ["Spinal anomaly"],
}


@dataclass(frozen=True)
class SubsetSpec:
    """One subset the generator writes: id, triplet, labels and what the catalog says of it."""

    id: str
    number: int  # 1-based; decides the test file under test_file=alternate
    modality: str
    area: str
    task: str
    labels: tuple[str, ...]
    name: str
    status: str
    data_no: str  # the records' "data-no" field
    folder: str  # image folder under med-mat/


def subset_name(modality: str, area: str, task: str) -> str:
    """Human-readable name of a synthetic subset, as the catalog lists it."""
    return f"Synthetic {modality} {area} {task}"


def image_folder(modality: str, area: str, task: str) -> str:
    """The subset's image folder under ``med-mat/`` (spaces and parentheses on purpose)."""
    return f"{FOLDER_PREFIX}{modality}_{area} ({task})"


def medmat_subset_ids(with_detection: bool) -> tuple[str, ...]:
    """Ids the ``medmat`` layout writes: 01-37, plus the detection subsets when asked."""
    return MEDMAT_LAYOUT_IDS + (tuple(MEDMAT_DETECTION_LABELS) if with_detection else ())


def medmat_subsets(with_detection: bool) -> list[SubsetSpec]:
    """The ``medmat`` layout's subsets, in file order."""
    out = []
    for sid in medmat_subset_ids(with_detection):
        info = MEDMAT_SUBSETS[sid]
        out.append(
            SubsetSpec(
                id=sid,
                number=int(sid),
                modality=info.modality,
                area=info.area,
                task=info.task,
                labels=tuple(MEDMAT_DETECTION_LABELS.get(sid) or MEDMAT_TASK_LABELS[info.task]),
                name=f"Synthetic {info.name}",
                status=info.status,
                data_no=str(info.sources[0]) if info.sources else str(1000 + int(sid)),
                # the id keeps subsets with one triplet (25/35, 27/36 ...) in separate folders
                folder=f"{FOLDER_PREFIX}{sid} {info.modality}_{info.area} ({info.task})",
            )
        )
    return out


def grid_subsets(
    triplets: Sequence[tuple[str, str, str]], task_labels: dict[str, list[str]]
) -> list[SubsetSpec]:
    """The ``grid`` layout's subsets: one per (modality, area, task) triplet, numbered from 01."""
    return [
        SubsetSpec(
            id=f"{number:02d}",
            number=number,
            modality=m,
            area=a,
            task=t,
            labels=tuple(task_labels[t]),
            name=subset_name(m, a, t),
            status="det" if t == DETECTION_TASK else "ID",
            data_no=str(1000 + number),
            folder=image_folder(m, a, t),
        )
        for number, (m, a, t) in enumerate(triplets, start=1)
    ]
