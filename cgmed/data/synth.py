"""A procedural *synthetic MAT world*, written in exactly the layout of the Med-MAT release.

Every image is composed of three separate factors, so that a small model can learn them one
by one and compose them into combinations it never saw:

- the **modality** is the rendering style: background colour, organ colour and texture;
- the **area** is the anatomy outline: a distinct organ shape per area;
- the **label** is a finding drawn *inside* the organ, in a colour that contrasts with every
  modality's organ colour. A task fixes the family of findings (masses, lesions, dot counts,
  shapes) and each label of the task one variant; the same label of the same task looks the
  same under every modality and area. A label named ``Normal`` draws no finding.

``write_release`` writes ``Aggregated_Subsets/Subset--NN-{train,test}.json``, the PNG images
under ``med-mat/`` and a ``cgmed_catalog.json`` declaring each subset's triplet, so every
reader path of cgmed runs on it.

Two layouts (``synth.layout``):

- ``grid`` (default): the subsets are ``synth.modalities x synth.areas x synth.tasks`` (or
  ``synth.combinations``), numbered 01, 02, ... in that order, all with status ID.
- ``medmat``: a stand-in for the whole Med-MAT classification release: subsets 01-37 with
  their real ids, MAT triplets (CG task tags) and ID/OOD status from
  ``cgmed.data.subsets.MEDMAT_SUBSETS``, and synthetic labels per task tag
  (``MEDMAT_TASK_LABELS``). ``synth.modalities/areas/tasks/combinations`` are ignored there.
  With ``synth.medmat_detection: true`` it also writes the detection subsets the paper's
  classification <-> detection experiments use (38, 39, 42, 47, 49; Tables 5/13/14), with one
  finding label each (``MEDMAT_DETECTION_LABELS``); segmentation subsets are never written.
  Configs written for the real release (e.g. ``cgmed/conf/experiment/paper/``) then run unchanged on
  synthetic pixels.

**Detection subsets** (task tag ``Det``, e.g. ``synth.tasks: {Det: [Tumor]}``): the labels are
finding names (no ``Normal``: there would be nothing to box). Each image draws its label's
finding, with the look the same label has in a classification task of the world when there is
one (else its designed look, e.g. Tumor = the yellow disc), and its ground-truth box is the
min/max x/y of the finding's pixel mask (the paper derives boxes from masks), on MiniGPT-v2's
0-100 grid: x1, y1 = floor(left/top pixel edge * 100 / size), x2, y2 = ceil(right/bottom pixel
edge * 100 / size), so the box always encloses every finding pixel. Records keep the release
fields ``id``, ``caption`` (the finding), ``image``, ``Question`` (a detection instruction,
``choices.DETECTION_TEMPLATES``), ``Answer`` (the box, ``{<x1><y1><x2><y2>}``) and ``data-no``,
plus ``bbox`` ([x1, y1, x2, y2]); there is no ``Question-choice`` / ``Answer-choice``. The
catalog gives these subsets ``task: Det`` and ``status: det``, so the split rules train on them
only when a selection names them or ``split.train_status`` includes ``det`` (the default
``[ID, OOD]`` leaves them out, as for the real release). Worlds without a Det task are written
exactly as before.

Output is a pure function of the config: every image and record draws from its own RNG
(``rng_for(seed, subset, split, index)``), so files are byte-identical between runs and
independent of iteration order.
"""

from __future__ import annotations

import colorsys
import json
import math
import random
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cgmed.data import choices
from cgmed.data.boxes import format_box
from cgmed.data.record import rng_for, stable_int
from cgmed.data.subsets import CATALOG_FILE, MEDMAT_SUBSETS
from cgmed.data.vocab import DETECTION_TASK, Vocabulary
from cgmed.errors import ConfigError, DataError

CATALOG_FORMAT = "cgmed-catalog/1"
SUBSETS_DIR = "Aggregated_Subsets"
IMAGES_DIR = "med-mat"
_FOLDER_PREFIX = "Synth "
TEST_FILE_MODES = ("all", "none", "alternate")
OPTION_ORDERS = ("shuffle", "sorted")
LAYOUTS = ("grid", "medmat")
# Segmentation needs mask answers, which no reader or evaluator of cgmed handles yet.
_UNSUPPORTED_TASKS = ("Seg",)
_BAD_LABEL_CHARS = re.compile(r"[/\\\x00-\x1f]")

RGB = tuple[int, int, int]

# Labels of the ``medmat`` layout, one list per CG task tag, so every subset with a tag shows the
# same findings (render rules below: one finding per label and task). Under these rules the
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


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------


@dataclass
class SynthConfig:
    """``synth`` config group: which MAT combinations the synthetic world holds and how it looks."""

    modalities: list[str] = field(default_factory=lambda: ["CT", "MRI", "X-ray"])
    areas: list[str] = field(default_factory=lambda: ["Lung", "Brain", "Bones"])
    tasks: dict[str, list[str]] = field(
        default_factory=lambda: {"Cancer": ["Normal", "Tumor"], "Diseases": ["Cyst", "Normal", "Stone"]}
    )
    combinations: list[list[str]] | None = None  # [[M, A, T], ...]; None = every M x A x T
    images_per_subset: int = 120  # train + test
    image_size: int = 64
    test_file: str = "all"  # all | none (readers split 9:1) | alternate (odd-numbered subsets only)
    test_fraction: float = 0.1  # share of each subset written to its test file
    option_order: str = "shuffle"  # shuffle | sorted, see choices.make_options
    seed: int = 0
    # grid: the subsets above; medmat: Med-MAT's classification subsets 01-37 (real ids, triplets,
    # status) with MEDMAT_TASK_LABELS; modalities/areas/tasks/combinations are then ignored.
    layout: str = "grid"
    # medmat layout only: also write the detection subsets 38/39/42/45/47/49 (MEDMAT_DETECTION_LABELS).
    # Off by default so that existing medmat worlds (and their cache keys) stay as they were.
    medmat_detection: bool = False

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ConfigError("synth.layout", f"{self.layout!r} is not one of {list(LAYOUTS)}")
        if not isinstance(self.medmat_detection, bool):
            raise ConfigError(
                "synth.medmat_detection", f"must be true or false, got {self.medmat_detection!r}"
            )
        if self.medmat_detection and self.layout != "medmat":
            raise ConfigError(
                "synth.medmat_detection",
                f"only applies to layout=medmat (layout is {self.layout!r})",
                "add a Det task to synth.tasks for a grid world with detection subsets",
            )
        vocab = Vocabulary()
        self.modalities = self._elements(vocab, "modality", "modalities", self.modalities)
        self.areas = self._elements(vocab, "area", "areas", self.areas)
        self.tasks = self._tasks(vocab)
        self.combinations = self._combinations(vocab)
        self._numbers()

    # Each check names the key and says how to fix it; a typo never reaches the generator.
    @staticmethod
    def _elements(vocab: Vocabulary, kind: str, key: str, names: Any) -> list[str]:
        where = f"synth.{key}"
        if isinstance(names, str) or not isinstance(names, (list, tuple)) or not names:
            raise ConfigError(
                where, f"must be a non-empty list of {kind} names, got {names!r}", f"e.g. {where}=[...]"
            )
        out = [vocab.canonical(kind, str(n), where=where) for n in names]
        dup = sorted({n for n in out if out.count(n) > 1})
        if dup:
            raise ConfigError(where, f"{kind} {dup[0]!r} is listed twice", "list each element once")
        return out

    def _tasks(self, vocab: Vocabulary) -> dict[str, list[str]]:
        where = "synth.tasks"
        if not isinstance(self.tasks, dict) or not self.tasks:
            raise ConfigError(
                where,
                f"must map task tags to label lists, got {self.tasks!r}",
                "e.g. {Cancer: [Normal, Tumor]}",
            )
        out: dict[str, list[str]] = {}
        for tag, labels in self.tasks.items():
            canon = vocab.canonical("task", str(tag), where=where)
            key = f"{where}.{tag}"
            if canon in _UNSUPPORTED_TASKS:
                raise ConfigError(
                    key, f"{canon} subsets are not generated (classification tasks only)", "remove it"
                )
            if canon in out:
                raise ConfigError(key, f"task {canon!r} is given twice", "merge the two label lists")
            if canon == DETECTION_TASK:
                out[canon] = self._det_labels(key, labels)
                continue
            if isinstance(labels, str) or not isinstance(labels, (list, tuple)) or len(labels) < 2:
                raise ConfigError(
                    key,
                    f"needs at least 2 labels (a question needs a distractor), got {labels!r}",
                    f"e.g. {key}=[Normal, X]",
                )
            clean = [str(x).strip() for x in labels]
            for lab in clean:
                if not lab or lab in (".", "..") or _BAD_LABEL_CHARS.search(lab):
                    raise ConfigError(key, f"label {lab!r} cannot name an image folder", "use plain words")
            lowered = [x.lower() for x in clean]
            dup = sorted({x for x in lowered if lowered.count(x) > 1})
            if dup:
                # same_label() compares case-insensitively, so these would be one answer.
                raise ConfigError(
                    key, f"label {dup[0]!r} is listed twice (case-insensitively)", "list each label once"
                )
            out[canon] = clean
        return out

    @staticmethod
    def _det_labels(key: str, labels: Any) -> list[str]:
        """A Det task's finding names: one or more, none Normal, each usable as a folder name."""
        if isinstance(labels, str) or not isinstance(labels, (list, tuple)) or not labels:
            raise ConfigError(
                key, f"needs a list of finding names to box, got {labels!r}", f"e.g. {key}=[Tumor]"
            )
        clean = [str(x).strip() for x in labels]
        for lab in clean:
            if not lab or lab in (".", "..") or _BAD_LABEL_CHARS.search(lab):
                raise ConfigError(key, f"label {lab!r} cannot name an image folder", "use plain words")
            if is_normal(lab):
                raise ConfigError(
                    key, f"label {lab!r} draws no finding, so its images would have no box", "remove it"
                )
        lowered = [x.lower() for x in clean]
        dup = sorted({x for x in lowered if lowered.count(x) > 1})
        if dup:
            raise ConfigError(
                key, f"label {dup[0]!r} is listed twice (case-insensitively)", "list each label once"
            )
        return clean

    def _combinations(self, vocab: Vocabulary) -> list[list[str]] | None:
        where = "synth.combinations"
        if self.combinations is None:
            # Stays None (not expanded) so that dataclasses.replace() with other lists still works.
            return None
        if (
            isinstance(self.combinations, str)
            or not isinstance(self.combinations, (list, tuple))
            or not self.combinations
        ):
            raise ConfigError(
                where, "must be a non-empty list of [modality, area, task] triplets", "or null for all"
            )
        out: list[list[str]] = []
        for i, combo in enumerate(self.combinations):
            key = f"{where}[{i}]"
            if isinstance(combo, str) or not isinstance(combo, (list, tuple)) or len(combo) != 3:
                raise ConfigError(key, f"expected [modality, area, task], got {combo!r}")
            m = vocab.canonical("modality", str(combo[0]), where=key)
            a = vocab.canonical("area", str(combo[1]), where=key)
            t = vocab.canonical("task", str(combo[2]), where=key)
            for value, pool, name in (
                (m, self.modalities, "modalities"),
                (a, self.areas, "areas"),
                (t, self.tasks, "tasks"),
            ):
                if value not in pool:
                    raise ConfigError(
                        key,
                        f"{value!r} is not in synth.{name}",
                        f"add it to synth.{name} or drop the triplet",
                    )
            if [m, a, t] in out:
                raise ConfigError(key, f"triplet {[m, a, t]} is listed twice", "list each triplet once")
            out.append([m, a, t])
        return out

    def _numbers(self) -> None:
        if self.test_file not in TEST_FILE_MODES:
            raise ConfigError("synth.test_file", f"{self.test_file!r} is not one of {list(TEST_FILE_MODES)}")
        if self.option_order not in OPTION_ORDERS:
            raise ConfigError(
                "synth.option_order", f"{self.option_order!r} is not one of {list(OPTION_ORDERS)}"
            )
        if (
            isinstance(self.image_size, bool)
            or not isinstance(self.image_size, int)
            or not 16 <= self.image_size <= 512
        ):
            raise ConfigError("synth.image_size", f"must be an integer in [16, 512], got {self.image_size!r}")
        if not 0.0 <= float(self.test_fraction) < 1.0:
            raise ConfigError("synth.test_fraction", f"must be in [0, 1), got {self.test_fraction}")
        if self.test_fraction == 0 and self.test_file != "none":
            raise ConfigError(
                "synth.test_fraction",
                f"is 0 but test_file={self.test_file!r} asks for test files",
                "set it > 0 or test_file=none",
            )
        most = max(len(spec.labels) for spec in self.subsets())
        if isinstance(self.images_per_subset, bool) or not isinstance(self.images_per_subset, int):
            raise ConfigError(
                "synth.images_per_subset", f"must be an integer, got {self.images_per_subset!r}"
            )
        if self.images_per_subset < 2 * most:
            raise ConfigError(
                "synth.images_per_subset",
                f"{self.images_per_subset} is fewer than 2 images per label for a task with {most} labels",
                f"set it to at least {2 * most}",
            )
        n_test = self.test_count(1)
        if n_test and self.images_per_subset - n_test < most:
            raise ConfigError(
                "synth.test_fraction",
                f"{self.test_fraction} leaves fewer training images than labels",
                "lower it or raise synth.images_per_subset",
            )

    def triplets(self) -> list[tuple[str, str, str]]:
        """(modality, area, task) per subset, in subset order (grid: subset ``NN`` is entry ``NN - 1``)."""
        if self.layout == "medmat":
            return [MEDMAT_SUBSETS[sid].triplet for sid in self._medmat_ids()]
        if self.combinations is None:
            # M outer, A middle, T inner: the subset numbering the docs promise.
            return [(m, a, t) for m in self.modalities for a in self.areas for t in self.tasks]
        return [(m, a, t) for m, a, t in self.combinations]

    def _medmat_ids(self) -> tuple[str, ...]:
        return MEDMAT_LAYOUT_IDS + (tuple(MEDMAT_DETECTION_LABELS) if self.medmat_detection else ())

    def subsets(self) -> list[SubsetSpec]:
        """Every subset the generator writes, in file order."""
        if self.layout == "medmat":
            out = []
            for sid in self._medmat_ids():
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
                        folder=f"{_FOLDER_PREFIX}{sid} {info.modality}_{info.area} ({info.task})",
                    )
                )
            return out
        return [
            SubsetSpec(
                id=f"{number:02d}",
                number=number,
                modality=m,
                area=a,
                task=t,
                labels=tuple(self.tasks[t]),
                name=subset_name(m, a, t),
                status="det" if t == DETECTION_TASK else "ID",
                data_no=str(1000 + number),
                folder=image_folder(m, a, t),
            )
            for number, (m, a, t) in enumerate(self.triplets(), start=1)
        ]

    def classification_labels(self) -> dict[str, list[str]]:
        """Label lists of the world's classification tasks (what Det labels borrow looks from)."""
        if self.layout == "medmat":
            return {t: list(v) for t, v in MEDMAT_TASK_LABELS.items()}
        return {t: list(v) for t, v in self.tasks.items() if t != DETECTION_TASK}

    def has_test_file(self, number: int) -> bool:
        """Whether subset ``number`` (1-based) gets a ``Subset--NN-test.json``."""
        return self.test_file == "all" or (self.test_file == "alternate" and number % 2 == 1)

    def test_count(self, number: int) -> int:
        """Images of subset ``number`` written to its test file (at least 1 when it has one)."""
        if not self.has_test_file(number):
            return 0
        return max(1, round(self.images_per_subset * self.test_fraction))


# --------------------------------------------------------------------------------------------
# Modality: palette and texture
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Palette:
    """How a modality renders: background and organ colour, texture kind and noise strength."""

    background: RGB
    organ: RGB
    texture: str  # smooth | rings | speckle | grain | vignette | streaks
    noise: float  # std of per-pixel grey noise, in 0-255 units


PALETTES: dict[str, Palette] = {
    "CT": Palette((12, 12, 14), (150, 150, 150), "smooth", 3.0),
    "MRI": Palette((10, 12, 48), (95, 125, 240), "rings", 5.0),
    "X-ray": Palette((48, 48, 48), (225, 225, 225), "grain", 6.0),  # radiograph: bright bone on dark
    "US": Palette((6, 6, 6), (165, 150, 125), "speckle", 4.0),
    "Co": Palette((95, 30, 40), (235, 165, 175), "vignette", 4.0),
    "Der": Palette((230, 195, 170), (140, 85, 60), "vignette", 4.0),
    "DP": Palette((45, 65, 92), (235, 210, 190), "smooth", 4.0),
    "End": Palette((72, 18, 12), (215, 110, 100), "vignette", 5.0),
    "FP": Palette((0, 0, 0), (205, 95, 35), "vignette", 3.0),
    "Mic": Palette((240, 230, 245), (150, 80, 175), "grain", 7.0),
    "OCT": Palette((8, 8, 8), (175, 215, 175), "streaks", 6.0),
}
_TEXTURES = ("smooth", "rings", "speckle", "grain", "vignette", "streaks")

# Finding colours are saturated primaries/secondaries, far from every organ colour above
# (feasibility.md: a finding that does not stand out from the organ is never learned).
YELLOW: RGB = (255, 235, 0)
CYAN: RGB = (0, 235, 255)
MAGENTA: RGB = (255, 0, 230)
GREEN: RGB = (40, 255, 40)
FINDING_COLOURS: tuple[RGB, ...] = (YELLOW, CYAN, MAGENTA, GREEN)
MIN_CONTRAST = 120.0  # least RGB distance between an organ colour and any finding colour


def _distance(a: Sequence[float], b: Sequence[float]) -> float:
    return math.dist(a, b)


@cache
def palette(modality: str) -> Palette:
    """The modality's palette; unknown names get a deterministic one derived from the name."""
    if modality in PALETTES:
        return PALETTES[modality]
    rng = rng_for("synth-palette", modality)
    for _ in range(1000):
        hue = rng.random()
        organ = colorsys.hsv_to_rgb(hue, rng.uniform(0.2, 0.55), rng.uniform(0.55, 0.8))
        organ_rgb = tuple(int(round(c * 255)) for c in organ)
        if min(_distance(organ_rgb, f) for f in FINDING_COLOURS) >= MIN_CONTRAST:
            break
    bg = colorsys.hsv_to_rgb(
        (hue + rng.uniform(0.3, 0.7)) % 1.0, rng.uniform(0.3, 0.8), rng.uniform(0.04, 0.22)
    )
    return Palette(
        tuple(int(round(c * 255)) for c in bg),  # type: ignore[arg-type]
        organ_rgb,  # type: ignore[arg-type]
        rng.choice(_TEXTURES),
        rng.uniform(3.0, 7.0),
    )


@lru_cache(maxsize=16)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates on the unit square (x to the right, y down)."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    return np.broadcast_to(c[None, :], (size, size)), np.broadcast_to(c[:, None], (size, size))


@lru_cache(maxsize=16)
def _radius(size: int) -> np.ndarray:
    x, y = _grid(size)
    return np.sqrt((x - 0.5) ** 2 + (y - 0.5) ** 2)


def _texture(pal: Palette, size: int, rng: np.random.Generator) -> tuple[np.ndarray | float, np.ndarray]:
    """(gain, additive noise) for one image; gain multiplies colours, noise is grey."""
    noise = rng.standard_normal((size, size, 1), dtype=np.float32) * pal.noise
    kind = pal.texture
    if kind == "rings":  # MRI: concentric ring artefact, random phase
        phase = rng.random()
        gain = 1.0 + 0.12 * np.cos(2 * np.pi * (_radius(size) * 7.0 + phase))
        return gain[..., None], noise
    if kind == "speckle":  # ultrasound: multiplicative speckle
        return 1.0 + 0.22 * rng.standard_normal((size, size, 1), dtype=np.float32), noise
    if kind == "grain":
        return 1.0, noise * 1.6
    if kind == "vignette":  # circular light fall-off of scopes and cameras
        return (1.0 - 0.9 * _radius(size) ** 2)[..., None], noise
    if kind == "streaks":  # OCT: horizontal line noise (one gain per row)
        return 1.0 + 0.08 * rng.standard_normal((size, 1, 1), dtype=np.float32), noise
    return 1.0, noise


# --------------------------------------------------------------------------------------------
# Area: organ outline
# --------------------------------------------------------------------------------------------

ShapeFn = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, "np.ndarray | None"]]


def _ell(
    u: np.ndarray, v: np.ndarray, cx: float, cy: float, rx: float, ry: float, angle: float = 0.0
) -> np.ndarray:
    du, dv = u - cx, v - cy
    if angle:
        c, s = math.cos(angle), math.sin(angle)
        du, dv = c * du + s * dv, -s * du + c * dv
    return (du / rx) ** 2 + (dv / ry) ** 2 <= 1.0


def _rect(u: np.ndarray, v: np.ndarray, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return (u >= x0) & (u <= x1) & (v >= y0) & (v <= y1)


def _polar(u: np.ndarray, v: np.ndarray, cx: float, cy: float) -> tuple[np.ndarray, np.ndarray]:
    return np.sqrt((u - cx) ** 2 + (v - cy) ** 2), np.arctan2(v - cy, u - cx)


def _lung(u, v):
    return _ell(u, v, 0.31, 0.5, 0.165, 0.35) | _ell(u, v, 0.69, 0.5, 0.165, 0.35), None


def _brain(u, v):
    r, th = _polar(u, v, 0.5, 0.5)
    mask = r <= 0.36 * (1.0 + 0.05 * np.sin(9 * th))
    folds = mask & (np.abs(np.sin(5 * th + 22 * r)) < 0.18)  # gyri: darker curved lines
    return mask, np.where(folds, 0.78, 1.0)


def _bones(u, v):
    upper = _rect(u, v, 0.34, 0.0, 0.66, 0.44) | _ell(u, v, 0.5, 0.42, 0.23, 0.06)
    lower = _rect(u, v, 0.35, 0.56, 0.65, 1.0) | _ell(u, v, 0.5, 0.585, 0.22, 0.05)
    return upper | lower, None


def _kidney(u, v):
    left = _ell(u, v, 0.27, 0.52, 0.19, 0.29) & ~_ell(u, v, 0.46, 0.52, 0.06, 0.08)
    right = _ell(u, v, 0.73, 0.52, 0.19, 0.29) & ~_ell(u, v, 0.54, 0.52, 0.06, 0.08)
    return left | right, None


def _cervix(u, v):
    # a wide oval with the external os as a dark slit in its middle
    return _ell(u, v, 0.5, 0.5, 0.45, 0.33) & ~_ell(u, v, 0.5, 0.5, 0.07, 0.035), None


def _intestine_centre(u):
    return 0.5 + 0.12 * np.sin(2 * np.pi * 1.2 * (u - 0.1))


def _intestine(u, v):
    d = np.abs(v - _intestine_centre(u))
    mask = (d < 0.19) & (u > 0.03) & (u < 0.97)
    haustra = mask & (np.abs(np.sin(2 * np.pi * 9 * u)) < 0.15)  # folds across the tube
    return mask, np.where(haustra, 0.8, 1.0)


def _bladder(u, v):
    return _ell(u, v, 0.5, 0.6, 0.35, 0.28) & (v >= 0.4), None


def _fundus(u, v):
    mask = _ell(u, v, 0.5, 0.5, 0.45, 0.45)
    shade = np.where(_ell(u, v, 0.72, 0.5, 0.075, 0.075), 1.2, 1.0)  # optic disc
    r, _ = _polar(u, v, 0.9, 0.5)
    vessels = mask & (np.abs(r - 0.42) < 0.013)
    return mask, np.where(vessels, 0.7, shade)


def _retina_top(u):
    return 0.36 + 0.04 * np.sin(2 * np.pi * u) - 0.06 * np.exp(-(((u - 0.5) / 0.08) ** 2))


def _retina(u, v):
    top = _retina_top(u)
    mask = (v >= top) & (v <= top + 0.34)
    layers = mask & (np.abs(np.sin(2 * np.pi * (v - top) / 0.08)) < 0.12)
    return mask, np.where(layers, 0.82, 1.0)


def _breast(u, v):
    return _ell(u, v, 0.0, 0.5, 0.66, 0.42), None


def _chest(u, v):
    # a trunk: wide body with rounded shoulders reaching the bottom edge, and a neck
    body = _rect(u, v, 0.06, 0.34, 0.94, 1.0) | _rect(u, v, 0.2, 0.2, 0.8, 1.0)
    shoulders = _ell(u, v, 0.2, 0.34, 0.14, 0.14) | _ell(u, v, 0.8, 0.34, 0.14, 0.14)
    mask = body | shoulders | _rect(u, v, 0.4, 0.0, 0.6, 0.2)
    ribs = mask & (np.sin(2 * np.pi * 7 * v) > 0.75)
    return mask, np.where(ribs, 0.78, 1.0)


def _skin(u, v):
    return v >= 0.32 + 0.05 * np.sin(2 * np.pi * 2 * u), None


def _mouth(u, v):
    r, th = _polar(u, v, 0.5, 0.3)
    mask = (r >= 0.15) & (r <= 0.45) & (v >= 0.3)
    gaps = mask & (np.abs(np.sin(7 * th)) < 0.1)  # darker lines between teeth
    return mask, np.where(gaps, 0.72, 1.0)


def _cell(u, v):
    mask = _ell(u, v, 0.48, 0.5, 0.25, 0.23)
    for cx, cy in ((0.13, 0.14), (0.86, 0.18), (0.16, 0.86), (0.85, 0.84)):
        mask = mask | _ell(u, v, cx, cy, 0.07, 0.07)
    return mask, None


def _thyroid(u, v):
    lobes = _ell(u, v, 0.31, 0.46, 0.16, 0.29, 0.35) | _ell(u, v, 0.69, 0.46, 0.16, 0.29, -0.35)
    return lobes | _rect(u, v, 0.36, 0.56, 0.64, 0.68), None


def _liver(u, v):
    return _ell(u, v, 0.42, 0.47, 0.36, 0.28) | _ell(u, v, 0.7, 0.38, 0.22, 0.14), None


# area -> (shape in canonical unit-square coordinates, anchor points where findings may go)
_AREAS: dict[str, tuple[ShapeFn, list[tuple[float, float]]]] = {
    "Lung": (_lung, [(0.31, 0.42), (0.31, 0.58), (0.69, 0.42), (0.69, 0.58)]),
    "Brain": (_brain, [(0.5, 0.5), (0.4, 0.44), (0.6, 0.56), (0.44, 0.6), (0.58, 0.4)]),
    "Bones": (_bones, [(0.5, 0.2), (0.5, 0.3), (0.5, 0.72), (0.5, 0.8)]),
    "Kidney": (_kidney, [(0.25, 0.44), (0.25, 0.6), (0.75, 0.44), (0.75, 0.6)]),
    "Cervix": (_cervix, [(0.28, 0.5), (0.72, 0.5)]),
    "Intestine": (_intestine, [(0.2, 0.0), (0.4, 0.0), (0.6, 0.0), (0.8, 0.0)]),
    "Bladder": (_bladder, [(0.5, 0.62), (0.38, 0.62), (0.62, 0.62)]),
    "Fundus": (_fundus, [(0.4, 0.5), (0.4, 0.34), (0.4, 0.66), (0.28, 0.5)]),
    "Retina": (_retina, [(0.2, 0.0), (0.3, 0.0), (0.7, 0.0), (0.8, 0.0)]),
    "Breast": (_breast, [(0.22, 0.5), (0.28, 0.4), (0.28, 0.6)]),
    "Chest": (_chest, [(0.3, 0.5), (0.7, 0.5), (0.3, 0.75), (0.7, 0.75), (0.5, 0.6)]),
    "Skin": (_skin, [(0.3, 0.65), (0.5, 0.62), (0.7, 0.65), (0.5, 0.78)]),
    "Mouth": (_mouth, [(0.25, 0.47), (0.5, 0.6), (0.75, 0.47), (0.35, 0.56), (0.65, 0.56)]),
    "Cell": (_cell, [(0.48, 0.5), (0.42, 0.52), (0.54, 0.46)]),
    "Thyroid": (_thyroid, [(0.31, 0.44), (0.69, 0.44), (0.32, 0.5), (0.68, 0.5)]),
    "Liver": (_liver, [(0.32, 0.47), (0.44, 0.45), (0.42, 0.55)]),
}
# Band-shaped organs put their anchors on the band's centre line (y given as 0.0 above).
_CENTRE_LINES: dict[str, Callable[[float], float]] = {
    "Intestine": lambda u: float(_intestine_centre(np.float64(u))),
    "Retina": lambda u: float(_retina_top(np.float64(u))) + 0.17,
}


def _fallback_area(area: str) -> tuple[ShapeFn, list[tuple[float, float]]]:
    """A deterministic blob of two or three ellipses for an area without a designed outline."""
    rng = rng_for("synth-area", area)
    parts = [
        (
            rng.uniform(0.3, 0.7),
            rng.uniform(0.3, 0.7),
            rng.uniform(0.17, 0.3),
            rng.uniform(0.17, 0.3),
            rng.uniform(0, 3),
        )
        for _ in range(rng.choice((2, 3)))
    ]

    def shape(u, v):
        mask = _ell(u, v, *parts[0])
        for p in parts[1:]:
            mask = mask | _ell(u, v, *p)
        return mask, None

    return shape, [(p[0], p[1]) for p in parts]


@dataclass(frozen=True)
class AreaShape:
    """An organ outline in canonical coordinates and where a finding of what radius fits."""

    shape: ShapeFn
    anchors: tuple[tuple[float, float, float], ...]  # (x, y, clearance): disc of that radius lies inside


@cache
def area_shape(area: str) -> AreaShape:
    """The area's outline and its anchors, with each anchor's clearance measured once.

    Clearance (distance to the nearest point outside the organ) is measured on a fine grid,
    so that any finding whose extent is below it provably stays inside the organ.
    """
    fn, points = _AREAS.get(area) or _fallback_area(area)
    line = _CENTRE_LINES.get(area)
    if line is not None:
        points = [(x, line(x)) for x, _ in points]
    n = 360
    c = np.linspace(-0.25, 1.25, n)
    u, v = np.meshgrid(c, c)
    mask, _ = fn(u, v)
    outside = np.stack([u[~mask], v[~mask]], axis=1)
    anchors = []
    for x, y in points:
        clear = float(np.sqrt(((outside - (x, y)) ** 2).sum(axis=1)).min()) if len(outside) else 0.5
        anchors.append((x, y, clear - 1.5 / n * 1.5))  # minus the grid's own error
    return AreaShape(fn, tuple(anchors))


# --------------------------------------------------------------------------------------------
# Label: the finding
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """What a label draws: a shape kind, its colour, and for ``dots`` how many."""

    kind: str  # disc | small_disc | ring | square | cross | triangle | diamond | bar | dots
    colour: RGB
    count: int = 1


KINDS = ("disc", "ring", "square", "cross", "triangle", "diamond", "bar", "small_disc")
_FAMILY_ORDER: dict[str, list[tuple[str, RGB]]] = {
    # masses: diagnosis of a diseased state (Cancer, State, COVID)
    "mass": [
        ("disc", YELLOW),
        ("ring", CYAN),
        ("triangle", MAGENTA),
        ("cross", GREEN),
        ("square", MAGENTA),
        ("diamond", CYAN),
        ("bar", GREEN),
        ("small_disc", MAGENTA),
    ],
    # lesions: which disease
    "lesion": [
        ("ring", CYAN),
        ("square", MAGENTA),
        ("disc", YELLOW),
        ("cross", GREEN),
        ("triangle", YELLOW),
        ("diamond", CYAN),
        ("bar", GREEN),
        ("small_disc", MAGENTA),
    ],
    # anything else (Recognition, Quality, new tasks): told apart by shape
    "shape": [
        ("triangle", YELLOW),
        ("diamond", CYAN),
        ("cross", GREEN),
        ("square", MAGENTA),
        ("ring", CYAN),
        ("disc", YELLOW),
        ("bar", GREEN),
        ("small_disc", MAGENTA),
    ],
}
# Det draws masses: a detection label without a designed or borrowed look (see
# detection_looks) is a compact blob, like the paper's lesions, polyps and nodules.
_TASK_FAMILY = {
    "Cancer": "mass",
    "State": "mass",
    "COVID": "mass",
    "Diseases": "lesion",
    "Level": "count",
    DETECTION_TASK: "mass",
}
# Labels with a designed look keep it in every task that has them.
_DESIGNED: dict[str, tuple[str, RGB]] = {
    "tumor": ("disc", YELLOW),
    "tumour": ("disc", YELLOW),
    "malignant": ("disc", YELLOW),
    "cancer": ("disc", YELLOW),
    "cyst": ("ring", CYAN),
    "stone": ("square", MAGENTA),
    "fracture": ("bar", GREEN),
    "fractured": ("bar", GREEN),
}
_LEVEL_WORDS = {
    "minimal": 1,
    "low": 1,
    "mild": 1,
    "medium": 2,
    "moderate": 2,
    "high": 3,
    "severe": 3,
    "proliferative": 4,
}
MAX_DOTS = 5  # six dots in a 2x3 block no longer fit a lung lobe at 32 px


def is_normal(label: str) -> bool:
    """Whether ``label`` is the no-finding label (drawn without a finding)."""
    return label.strip().lower() == "normal"


def _level_of(label: str) -> int | None:
    digits = re.search(r"\d+", label)
    if digits:
        return int(digits.group()) + 1  # "Level 0" still draws one dot: only Normal draws none
    for word, n in _LEVEL_WORDS.items():
        if word in label.lower():
            return n
    return None


def finding_for(task: str, label: str, labels: Sequence[str] | None = None) -> Finding | None:
    """The finding ``label`` draws in ``task``; None for Normal.

    ``labels`` is the task's whole label list: labels without a designed look then take
    distinct variants in sorted order, so two labels of one task never look alike. Without it
    the label is placed as if it were the task's only label.
    """
    if is_normal(label):
        return None
    pool = sorted({x for x in (*(labels or ()), label) if not is_normal(x)}, key=lambda s: (s.lower(), s))
    family = _TASK_FAMILY.get(task, "shape")
    if family == "count":
        # Parsed levels first (by level), unparsed ones after; counts strictly increase.
        ranked = sorted(pool, key=lambda s: (_level_of(s) is None, _level_of(s) or 0, s.lower()))
        count = 0
        for x in ranked:
            count = max(_level_of(x) or 0, count + 1)
            if x == label:
                break
        # Beyond MAX_DOTS the colour changes, so high levels stay countable and distinct.
        return Finding("dots", FINDING_COLOURS[((count - 1) // MAX_DOTS) % 4], (count - 1) % MAX_DOTS + 1)
    order = list(_FAMILY_ORDER[family])
    order += [(k, c) for k in KINDS for c in FINDING_COLOURS if (k, c) not in order]
    taken: dict[str, tuple[str, RGB]] = {}
    for x in pool:
        want = _DESIGNED.get(x.lower())
        if want and want not in taken.values():
            taken[x] = want
    free = [v for v in order if v not in taken.values()]
    for x in pool:
        if x not in taken:
            taken[x] = free.pop(0) if free else order[stable_int(task, x) % len(order)]
    kind, colour = taken[label]
    return Finding(kind, colour)


def detection_looks(
    det_labels: Sequence[str], classification: dict[str, Sequence[str]]
) -> dict[str, Finding]:
    """The finding each label of a Det subset draws.

    A label that is also a label of a classification task of the world (compared
    case-insensitively; first task in ``classification`` order) borrows that look, so that what
    a model learns to name in classification is the same thing it learns to box, and the
    reverse. Others take ``finding_for("Det", ...)`` (designed looks first, then masses). When
    borrowing would give two labels of the subset one look, none borrows: the labels of one
    subset always look different.
    """
    looks: dict[str, Finding] = {}
    for lab in det_labels:
        own = finding_for(DETECTION_TASK, lab, det_labels)
        for task, labels in classification.items():
            hit = next((x for x in labels if x.lower() == lab.lower() and not is_normal(x)), None)
            if hit is not None:
                own = finding_for(task, hit, labels)
                break
        looks[lab] = own  # type: ignore[assignment]  # Det labels are never Normal
    if len(set(looks.values())) < len(looks):
        looks = {lab: finding_for(DETECTION_TASK, lab, det_labels) for lab in det_labels}  # type: ignore[misc]
    return looks


# Dot layouts on a unit spacing, centred on (0, 0).
_DOT_LAYOUT = {
    1: [(0, 0)],
    2: [(-0.5, 0), (0.5, 0)],
    3: [(0, -0.45), (-0.5, 0.4), (0.5, 0.4)],
    4: [(-0.5, -0.5), (0.5, -0.5), (-0.5, 0.5), (0.5, 0.5)],
    5: [(-0.55, -0.55), (0.55, -0.55), (0, 0), (-0.55, 0.55), (0.55, 0.55)],
}


def _finding_params(f: Finding, k: float, size: int) -> tuple[dict[str, float], float]:
    """Sizes (unit-square units) at scale ``k`` and the finding's extent (radius of its hull).

    Thin parts have a floor in pixels so that they stay visible at 32 px.
    """
    px = 1.0 / size
    if f.kind == "disc":
        p = {"r": 0.1 * k}
        return p, p["r"]
    if f.kind == "small_disc":
        p = {"r": max(0.06 * k, 2.2 * px)}
        return p, p["r"]
    if f.kind == "ring":
        ro = 0.11 * k
        p = {"ro": ro, "ri": min(0.055 * k, ro - 1.9 * px)}
        return p, ro
    if f.kind == "square":
        p = {"h": 0.07 * k}
        return p, p["h"] * math.sqrt(2)
    if f.kind in ("cross", "bar"):
        p = {"l": 0.095 * k, "w": max(0.03 * k, 1.0 * px)}
        return p, math.hypot(p["l"], p["w"])
    if f.kind in ("triangle", "diamond"):
        p = {"r": 0.11 * k}
        return p, p["r"]
    if f.kind == "dots":
        r = max(0.038 * k, 1.2 * px)
        d = max(0.08 * k, 2 * r + 1.0 * px)  # dots never touch, so they can be counted
        ext = max(math.hypot(a * d, b * d) for a, b in _DOT_LAYOUT[f.count]) + r
        return {"r": r, "d": d}, ext
    raise ValueError(f"unknown finding kind {f.kind!r}")


def _finding_mask(
    f: Finding, p: dict[str, float], x: np.ndarray, y: np.ndarray, cx: float, cy: float
) -> np.ndarray:
    dx, dy = x - cx, y - cy
    kind = f.kind
    if kind in ("disc", "small_disc"):
        return dx * dx + dy * dy <= p["r"] ** 2
    if kind == "ring":
        d2 = dx * dx + dy * dy
        return (d2 <= p["ro"] ** 2) & (d2 >= p["ri"] ** 2)
    if kind == "square":
        return (np.abs(dx) <= p["h"]) & (np.abs(dy) <= p["h"])
    if kind == "cross":
        ax, ay = np.abs(dx), np.abs(dy)
        return ((ax <= p["l"]) & (ay <= p["w"])) | ((ay <= p["l"]) & (ax <= p["w"]))
    if kind == "bar":  # a diagonal crack
        a, b = (dx + dy) * math.sqrt(0.5), (dx - dy) * math.sqrt(0.5)
        return (np.abs(a) <= p["l"]) & (np.abs(b) <= p["w"])
    if kind == "triangle":  # equilateral, pointing up, centroid at (cx, cy)
        r, s3 = p["r"], math.sqrt(3)
        return (dy <= r / 2) & (s3 * dx - dy <= r) & (-s3 * dx - dy <= r)
    if kind == "diamond":
        return np.abs(dx) + np.abs(dy) <= p["r"]
    if kind == "dots":
        r2, d = p["r"] ** 2, p["d"]
        mask = np.zeros(x.shape, dtype=bool)
        for a, b in _DOT_LAYOUT[f.count]:
            mask |= (dx - a * d) ** 2 + (dy - b * d) ** 2 <= r2
        return mask
    raise ValueError(f"unknown finding kind {kind!r}")


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------

_MARGIN = 0.004  # extra clearance (unit-square units) on top of the measured one


def _place(
    finding: Finding, shape: AreaShape, rng: random.Random, size: int, sc: float, tx: float, ty: float
) -> tuple[dict[str, float], float, float, float, float]:
    """Size and centre of a finding: (params, cx, cy, extent, room).

    Picks an anchor whose clearance (``room``, after the organ's scale jitter) holds the
    finding's extent and jitters the centre within the spare room, so the finding lies inside
    the organ wherever it lands.
    """
    # Four draws, always, so the RNG's later state never depends on the area.
    k, pick, spread, angle = rng.uniform(0.9, 1.1), rng.random(), rng.random(), rng.uniform(0, 2 * math.pi)
    params, extent = _finding_params(finding, k, size)
    room = [(ax, ay, c * sc - _MARGIN) for ax, ay, c in shape.anchors]
    fits = [a for a in room if a[2] >= extent]
    if not fits:
        # No anchor is roomy enough (a narrow organ): shrink the finding into the roomiest one.
        best = max(room, key=lambda a: a[2])
        k *= max(best[2], 0.01) / extent
        params, extent = _finding_params(finding, k, size)
        fits = [best]
    ax, ay, c = fits[min(int(pick * len(fits)), len(fits) - 1)]
    slack = min(max(c - extent, 0.0), 0.12)
    dist = slack * math.sqrt(spread)  # uniform over the disc of spare room
    cx = (ax - 0.5) * sc + 0.5 + tx + dist * math.cos(angle)
    cy = (ay - 0.5) * sc + 0.5 + ty + dist * math.sin(angle)
    return params, cx, cy, extent, c


def render(
    modality: str,
    area: str,
    task: str,
    label: str,
    rng: random.Random,
    size: int,
    labels: Sequence[str] | None = None,
) -> Image.Image:
    """One RGB image of ``label`` in a ``modality`` ``area`` ``task`` subset.

    Random draws happen in a fixed order (organ jitter, texture seed, then the finding), so
    with equal RNG states a Normal and a non-Normal image share organ and texture, and two
    modalities or two labels share the geometry: only the intended factor changes.
    ``labels`` (the task's label list) keeps labels of one task apart, see ``finding_for``.
    From 32 px up every finding fits inside its organ whole; below that, pixel floors that
    keep thin parts visible can make it larger than the organ allows, and it is clipped.
    """
    return _draw(modality, area, finding_for(task, label, labels), rng, size)[0]


def render_detection(
    modality: str, area: str, finding: Finding, rng: random.Random, size: int
) -> tuple[Image.Image, list[int]]:
    """One image with ``finding`` drawn, and the finding's box on the 0-100 grid (``box_from_mask``).

    Same draws as ``render``, so a detection image equals the classification image of the
    label with that look under the same RNG state.
    """
    img, fmask = _draw(modality, area, finding, rng, size)
    return img, box_from_mask(fmask)


def box_from_mask(mask: np.ndarray) -> list[int]:
    """``[x1, y1, x2, y2]`` on a 0-100 grid enclosing every True pixel of ``mask`` (rows = y).

    The box is the mask's outermost extent in pixel edges (left edge of the leftmost pixel to
    right edge of the rightmost), scaled by 100 / size, rounded outwards (floor for x1/y1, ceil
    for x2/y2) so it never cuts a pixel off. Raises ValueError for an empty mask.
    """
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        raise ValueError("the finding mask is empty: nothing to box")
    h, w = mask.shape
    # Integer arithmetic: float rounding must not push an exact edge (e.g. 32 px -> 50.0) up by one.
    return [
        (int(xs.min()) * 100) // w,
        (int(ys.min()) * 100) // h,
        -((-(int(xs.max()) + 1) * 100) // w),
        -((-(int(ys.max()) + 1) * 100) // h),
    ]


def _draw(
    modality: str, area: str, finding: Finding | None, rng: random.Random, size: int
) -> tuple[Image.Image, np.ndarray | None]:
    """The image and the finding's pixel mask (None without a finding)."""
    tx, ty = rng.uniform(-0.04, 0.04), rng.uniform(-0.04, 0.04)
    sc = rng.uniform(0.94, 1.06)
    tex_rng = np.random.default_rng(rng.getrandbits(64))

    x, y = _grid(size)
    shape = area_shape(area)
    mask, shade = shape.shape((x - 0.5 - tx) / sc + 0.5, (y - 0.5 - ty) / sc + 0.5)
    pal = palette(modality)
    organ = np.asarray(pal.organ, dtype=np.float32)
    organ_px = organ if shade is None else organ * shade[..., None].astype(np.float32)  # folds, ribs
    img = np.where(mask[..., None], organ_px, np.asarray(pal.background, dtype=np.float32))
    gain, noise = _texture(pal, size, tex_rng)
    img = img * gain + noise

    fmask = None
    if finding is not None:
        # A little brightness jitter, identical across modalities and areas (drawn first).
        brightness = rng.uniform(0.9, 1.0)
        params, cx, cy = _place(finding, shape, rng, size, sc, tx, ty)[:3]
        # The placement keeps the finding inside the organ; the clip only guards rounding, so
        # a finding can never land on the background where it might not stand out.
        fmask = _finding_mask(finding, params, x, y, cx, cy) & mask
        img[fmask] = np.asarray(finding.colour, dtype=np.float32) * brightness
    return Image.fromarray(np.clip(img + 0.5, 0, 255).astype(np.uint8), "RGB"), fmask


def _save_png(img: Image.Image, path: Path) -> None:
    # Fixed zlib level and no text/time chunks: equal pixels give equal bytes.
    img.save(path, format="PNG", compress_level=6, optimize=False)


# --------------------------------------------------------------------------------------------
# Writing the release
# --------------------------------------------------------------------------------------------


def subset_name(modality: str, area: str, task: str) -> str:
    """Human-readable name of a synthetic subset, as the catalog lists it."""
    return f"Synthetic {modality} {area} {task}"


def image_folder(modality: str, area: str, task: str) -> str:
    """The subset's image folder under ``med-mat/`` (spaces and parentheses on purpose)."""
    return f"{_FOLDER_PREFIX}{modality}_{area} ({task})"


def _prepare(root: Path) -> None:
    """Refuse to write over a folder that holds subsets this generator did not write; clear ours."""
    agg = root / SUBSETS_DIR
    existing = sorted(agg.glob("Subset-*.json*")) if agg.is_dir() else []
    ours = False
    catalog = root / CATALOG_FILE
    if catalog.is_file():
        try:
            doc = json.loads(catalog.read_text(encoding="utf-8"))
            ours = doc.get("format") == CATALOG_FORMAT and doc.get("name") == "synthetic"
        except (json.JSONDecodeError, AttributeError):
            ours = False
    images = root / IMAGES_DIR
    synth_dirs = (
        sorted(p for p in images.iterdir() if p.name.startswith(_FOLDER_PREFIX)) if images.is_dir() else []
    )
    if existing and not ours:
        # An interrupted earlier run leaves no catalog (it is written last) but only our folders.
        others = (
            [p for p in images.iterdir() if not p.name.startswith(_FOLDER_PREFIX)] if images.is_dir() else []
        )
        if not synth_dirs or others:
            raise DataError(
                str(root),
                "holds Subset files that the synthetic generator did not write",
                "write the synthetic world into an empty or new folder",
            )
    # Stale files of an earlier config would otherwise mix into this one.
    for path in existing:
        path.unlink()
    for path in synth_dirs:
        shutil.rmtree(path)
    if catalog.is_file():
        catalog.unlink()


def _write_json_array(path: Path, records: list[dict[str, Any]]) -> None:
    body = ",\n".join(json.dumps(r, ensure_ascii=False) for r in records)
    path.write_text(f"[\n{body}\n]\n" if records else "[]\n", encoding="utf-8")


def _detection_record(
    cfg: SynthConfig,
    spec: SubsetSpec,
    finding: Finding,
    label: str,
    k: int,
    split: str,
    rel: str,
    root: Path,
    trng: random.Random,
) -> dict[str, Any]:
    """Draw and save image ``k`` of a Det subset; its release record (box in ``Answer`` and ``bbox``)."""
    try:
        img, box = render_detection(
            spec.modality, spec.area, finding, rng_for(cfg.seed, spec.id, split, k), cfg.image_size
        )
    except ValueError as err:  # a finding clipped away entirely (only possible far below 32 px)
        raise DataError(f"synthetic subset {spec.id} ({spec.name}), {split} image {k}", str(err)) from None
    _save_png(img, root / rel)
    return {
        "id": k,
        "caption": label,
        "image": rel,
        "Question": choices.detection_instruction(label, spec.modality, spec.area, trng),
        "Answer": format_box(box),
        "data-no": spec.data_no,
        "bbox": box,
    }


def write_release(cfg: SynthConfig, out: str | Path) -> dict[str, Any]:
    """Generate the synthetic world under ``out`` in the Med-MAT release layout.

    Writes ``Aggregated_Subsets/Subset--NN-train.json`` (and ``-test.json`` per
    ``cfg.test_file``), the PNG images under ``med-mat/`` and ``cgmed_catalog.json`` (last, so
    its presence marks a complete world). Earlier synthetic output in ``out`` is replaced.
    With ``cfg.layout == "medmat"`` the subsets are Med-MAT's classification subsets 01-37
    (real ids, triplets and ID/OOD status) with ``MEDMAT_TASK_LABELS`` as labels and each
    subset's first source dataset as ``data-no``, plus detection subsets 38/39/42/45/47/49 when
    ``cfg.medmat_detection``. Det subsets get box records (see the module docstring).
    Returns ``{"root", "subsets", "images", "seconds"}``.
    """
    start = time.perf_counter()
    root = Path(out).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    _prepare(root)
    (root / SUBSETS_DIR).mkdir(exist_ok=True)
    entries = []
    n_images = 0
    for spec in cfg.subsets():
        sid, number, m, a, t = spec.id, spec.number, spec.modality, spec.area, spec.task
        labels = list(spec.labels)
        folder = spec.folder
        looks = detection_looks(labels, cfg.classification_labels()) if t == DETECTION_TASK else None
        for label in labels:
            (root / IMAGES_DIR / folder / label).mkdir(parents=True, exist_ok=True)
        n = cfg.images_per_subset
        n_train = n - cfg.test_count(number)
        records: dict[str, list[dict[str, Any]]] = {"train": [], "test": []}
        # One label cycle over the whole subset: every consecutive block (train = the first
        # n_train, test = the rest) is then label-balanced to within one image.
        for k in range(n):
            split = "train" if k < n_train else "test"
            label = labels[k % len(labels)]
            rel = f"{IMAGES_DIR}/{folder}/{label}/{label}- ({k // len(labels) + 1}).png"
            # Text draws from its own RNG, so option settings never change the images.
            trng = rng_for(cfg.seed, sid, split, k, "text")
            if looks is not None:
                records[split].append(
                    _detection_record(cfg, spec, looks[label], label, k, split, rel, root, trng)
                )
                n_images += 1
                continue
            img = render(m, a, t, label, rng_for(cfg.seed, sid, split, k), cfg.image_size, labels=labels)
            _save_png(img, root / rel)
            question = choices.instruction(t, m, a, trng)
            options, letter = choices.make_options(label, labels, trng, max_options=4, order=cfg.option_order)
            records[split].append(
                {
                    "id": k,
                    "caption": label,
                    "image": rel,
                    "Question": question,
                    "Answer": label,
                    "Question-choice": choices.format_question(question, options),
                    "Answer-choice": letter,
                    "data-no": spec.data_no,
                }
            )
            n_images += 1
        _write_json_array(root / SUBSETS_DIR / f"Subset--{sid}-train.json", records["train"])
        if cfg.has_test_file(number):
            _write_json_array(root / SUBSETS_DIR / f"Subset--{sid}-test.json", records["test"])
        entries.append(
            {
                "id": sid,
                "modality": m,
                "area": a,
                "task": t,
                "name": spec.name,
                "status": spec.status,
                "labels": list(labels),
            }
        )
    config = asdict(cfg)  # lets a cache tell whether this world matches a requested config
    if not cfg.medmat_detection:
        del config["medmat_detection"]  # catalogs written before the flag existed stay byte-identical
    if cfg.layout == "grid":
        del config["layout"]  # grid catalogs stay byte-identical to those written before layouts existed
    catalog = {
        "format": CATALOG_FORMAT,
        "name": "synthetic",
        "seed": cfg.seed,
        "config": config,
        "subsets": entries,
    }
    if cfg.layout != "grid":
        catalog["layout"] = cfg.layout
    (root / CATALOG_FILE).write_text(
        json.dumps(catalog, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    return {
        "root": str(root),
        "subsets": len(entries),
        "images": n_images,
        "seconds": round(time.perf_counter() - start, 3),
    }
