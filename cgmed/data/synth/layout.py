"""Which subsets a synthetic world holds and where their files go.

The Med-MAT release layout (``Aggregated_Subsets/``, ``med-mat/``, the catalog format), each
subset's name and image folder, and the two subset lists of ``synth.layout``: the ``grid`` of
modalities x areas x tasks, and the ``medmat`` stand-in for the real release's subsets (real
ids, triplets and status, synthetic labels per task tag), optionally with the release's
multi-label subsets as label sets (``MEDMAT_MULTI_LABEL_FINDINGS``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import combinations

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
# none has a designed look, so each draws the first mass look (the yellow disc, as Tumor), except
# 47's Nodule with synth.medmat_multi_label: true, which looks as in subset 31 (detection_looks).
MEDMAT_DETECTION_LABELS: dict[str, list[str]] = {
    "38": ["Lesion"],
    "39": ["Polyp"],
    "42": ["Cancer cell"],
    "45": ["Lesion"],
    "47": ["Nodule"],
    "49": ["Spinal anomaly"],
}

# The multi-label subsets of Med-MAT (15 FP Fundus, 20 Mic Cell blood cells, 31 X-ray Chest, 33
# Mic Cell protein atlas, 37 X-ray Breast VinDr-Mammo), written as label sets with
# synth.medmat_multi_label: true. The individual findings of each; an image shows one or two of
# them, or none ("Normal"). Subset 20 names the cells of subset 18 (same triplet), so a cell
# looks the same in both; the others name findings of their source datasets, each with a look
# of its own within its task tag (see ``medmat_task_labels``).
MEDMAT_MULTI_LABEL_FINDINGS: dict[str, list[str]] = {
    "15": ["Cataract", "Glaucoma", "Myopia"],
    "20": ["Eosinophil", "Lymphocyte", "Neutrophil"],
    "31": ["Cardiomegaly", "Effusion", "Nodule", "Pneumothorax"],
    "33": ["Cytosol", "Nucleoplasm"],
    "37": ["Asymmetry", "Mass", "Nipple retraction"],
}
NORMAL = "Normal"  # the label of an image without findings
LABEL_SET_SEPARATOR = ", "  # as in the release: "Effusion, Nodule"
MAX_FINDINGS_PER_IMAGE = 2


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
    # A multi-label subset's individual findings (Normal excluded); empty for a single-label
    # subset. ``labels`` then holds the label sets its records answer with.
    findings: tuple[str, ...] = ()

    @property
    def label_cycle(self) -> tuple[str, ...]:
        """The labels of images 0, 1, 2, ... repeat this cycle (``labels`` once each when single-label)."""
        return multi_label_cycle(self.findings) if self.findings else self.labels


def format_label_set(findings: Iterable[str]) -> str:
    """A label set as a record writes it: the findings in canonical (sorted) order, comma-joined.

    No findings is the set ``Normal``.
    """
    names = sorted({name.strip() for name in findings if name.strip()}, key=lambda s: (s.lower(), s))
    return LABEL_SET_SEPARATOR.join(names) if names else NORMAL


def parse_label_set(text: str) -> list[str]:
    """The findings of a label set written by ``format_label_set`` (``Normal`` has none)."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    return [] if names == [NORMAL] else names


def multi_label_sets(findings: Sequence[str]) -> tuple[str, ...]:
    """Every label set of a multi-label subset: Normal, each finding alone, each pair of findings."""
    alone = sorted(findings, key=lambda s: (s.lower(), s))
    pairs = [format_label_set(pair) for pair in combinations(alone, MAX_FINDINGS_PER_IMAGE)]
    return (NORMAL, *alone, *pairs)


def multi_label_cycle(findings: Sequence[str]) -> tuple[str, ...]:
    """The label cycle of a multi-label subset's images: Normal and single findings twice, pairs once.

    Pairs are rarer than single findings in the release's multi-label subsets; the skew keeps
    that, so a test set balanced per label set comes out smaller than one balanced per finding.
    """
    every = multi_label_sets(findings)
    common = every[: 1 + len(findings)]  # Normal and the single findings
    return (*common, *every[len(common) :], *common)


def medmat_task_labels(multi_label: bool) -> dict[str, list[str]]:
    """Labels per task tag of the ``medmat`` layout; with ``multi_label`` the multi-label findings too.

    A finding's look is chosen among its task tag's labels (``findings.finding_for``), so each
    name keeps one look in every subset of its tag and no two names of a tag share one.
    """
    labels = {tag: list(names) for tag, names in MEDMAT_TASK_LABELS.items()}
    if multi_label:
        for sid, findings in MEDMAT_MULTI_LABEL_FINDINGS.items():
            pool = labels[MEDMAT_SUBSETS[sid].task]
            pool += [name for name in findings if name not in pool]
    return labels


def subset_name(modality: str, area: str, task: str) -> str:
    """Human-readable name of a synthetic subset, as the catalog lists it."""
    return f"Synthetic {modality} {area} {task}"


def image_folder(modality: str, area: str, task: str) -> str:
    """The subset's image folder under ``med-mat/`` (spaces and parentheses on purpose)."""
    return f"{FOLDER_PREFIX}{modality}_{area} ({task})"


def medmat_subset_ids(with_detection: bool) -> tuple[str, ...]:
    """Ids the ``medmat`` layout writes: 01-37, plus the detection subsets when asked."""
    return MEDMAT_LAYOUT_IDS + (tuple(MEDMAT_DETECTION_LABELS) if with_detection else ())


def medmat_subsets(with_detection: bool, multi_label: bool = False) -> list[SubsetSpec]:
    """The ``medmat`` layout's subsets, in file order; ``multi_label`` writes 15/20/31/33/37 as label sets."""
    out = []
    for sid in medmat_subset_ids(with_detection):
        info = MEDMAT_SUBSETS[sid]
        findings = tuple(MEDMAT_MULTI_LABEL_FINDINGS.get(sid, ())) if multi_label else ()
        if findings:
            labels = multi_label_sets(findings)
        else:
            labels = tuple(MEDMAT_DETECTION_LABELS.get(sid) or MEDMAT_TASK_LABELS[info.task])
        out.append(
            SubsetSpec(
                id=sid,
                number=int(sid),
                modality=info.modality,
                area=info.area,
                task=info.task,
                labels=labels,
                name=f"Synthetic {info.name}",
                status=info.status,
                data_no=str(info.sources[0]) if info.sources else str(1000 + int(sid)),
                # the id keeps subsets with one triplet (25/35, 27/36 ...) in separate folders
                folder=f"{FOLDER_PREFIX}{sid} {info.modality}_{info.area} ({info.task})",
                findings=findings,
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
