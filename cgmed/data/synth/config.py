"""The ``synth`` config group (``SynthConfig``): what the world holds, checked before anything is drawn.

Every check names its ``synth.*`` key and says how to fix it, so a typo never reaches the
generator. The config also answers the generator's questions: which subsets (``subsets``),
which labels Det subsets borrow looks from, which subsets get a test file and how many images.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from cgmed.data.subsets import MEDMAT_SUBSETS
from cgmed.data.synth.findings import is_normal
from cgmed.data.synth.layout import (
    SubsetSpec,
    grid_subsets,
    medmat_subset_ids,
    medmat_subsets,
    medmat_task_labels,
)
from cgmed.data.vocab import DETECTION_TASK, Vocabulary
from cgmed.errors import ConfigError

TEST_FILE_MODES = ("all", "none", "alternate")
OPTION_ORDERS = ("shuffle", "sorted")
LAYOUTS = ("grid", "medmat")
# Segmentation needs mask answers, which no reader or evaluator of cgmed handles yet.
_UNSUPPORTED_TASKS = ("Seg",)
_BAD_LABEL_CHARS = re.compile(r"[/\\\x00-\x1f]")


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
    # medmat layout only: write the multi-label subsets 15/20/31/33/37 as label sets
    # (MEDMAT_MULTI_LABEL_FINDINGS), as the release does, instead of single-label subsets.
    # Off by default so that existing medmat worlds stay as they were.
    medmat_multi_label: bool = False

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ConfigError("synth.layout", f"{self.layout!r} is not one of {list(LAYOUTS)}")
        self._medmat_switch(
            "medmat_detection", "add a Det task to synth.tasks for a grid world with detection subsets"
        )
        self._medmat_switch("medmat_multi_label", "set synth.layout=medmat, or leave the switch off")
        vocab = Vocabulary()
        self.modalities = self._elements(vocab, "modality", "modalities", self.modalities)
        self.areas = self._elements(vocab, "area", "areas", self.areas)
        self.tasks = self._tasks(vocab)
        self.combinations = self._combinations(vocab)
        self._numbers()

    def _medmat_switch(self, name: str, fix: str) -> None:
        """A ``synth.medmat_*`` switch: true or false, and true only with layout=medmat."""
        value = getattr(self, name)
        if not isinstance(value, bool):
            raise ConfigError(f"synth.{name}", f"must be true or false, got {value!r}")
        if value and self.layout != "medmat":
            raise ConfigError(
                f"synth.{name}", f"only applies to layout=medmat (layout is {self.layout!r})", fix
            )

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
                _check_folder_name(key, lab)
            _check_no_duplicates(key, clean)
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
            _check_folder_name(key, lab)
            if is_normal(lab):
                raise ConfigError(
                    key, f"label {lab!r} draws no finding, so its images would have no box", "remove it"
                )
        _check_no_duplicates(key, clean)
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
        # A multi-label subset repeats some label sets within its cycle: the cycle sets the minimum.
        most = max(len(spec.label_cycle) for spec in self.subsets())
        if isinstance(self.images_per_subset, bool) or not isinstance(self.images_per_subset, int):
            raise ConfigError(
                "synth.images_per_subset", f"must be an integer, got {self.images_per_subset!r}"
            )
        if self.images_per_subset < 2 * most:
            raise ConfigError(
                "synth.images_per_subset",
                f"{self.images_per_subset} is fewer than 2 images per label for a subset that cycles "
                f"through {most} labels",
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
            return [MEDMAT_SUBSETS[sid].triplet for sid in medmat_subset_ids(self.medmat_detection)]
        if self.combinations is None:
            # M outer, A middle, T inner: the subset numbering the docs promise.
            return [(m, a, t) for m in self.modalities for a in self.areas for t in self.tasks]
        return [(m, a, t) for m, a, t in self.combinations]

    def subsets(self) -> list[SubsetSpec]:
        """Every subset the generator writes, in file order."""
        if self.layout == "medmat":
            return medmat_subsets(self.medmat_detection, self.medmat_multi_label)
        return grid_subsets(self.triplets(), self.tasks)

    def classification_labels(self) -> dict[str, list[str]]:
        """Label lists of the world's classification tasks, among which each finding's look is chosen.

        Det labels borrow looks from them; in the ``medmat`` layout they include the
        multi-label findings when ``medmat_multi_label`` is on.
        """
        if self.layout == "medmat":
            return medmat_task_labels(self.medmat_multi_label)
        return {t: list(v) for t, v in self.tasks.items() if t != DETECTION_TASK}

    def has_test_file(self, number: int) -> bool:
        """Whether subset ``number`` (1-based) gets a ``Subset--NN-test.json``."""
        return self.test_file == "all" or (self.test_file == "alternate" and number % 2 == 1)

    def test_count(self, number: int) -> int:
        """Images of subset ``number`` written to its test file (at least 1 when it has one)."""
        if not self.has_test_file(number):
            return 0
        return max(1, round(self.images_per_subset * self.test_fraction))


def _check_folder_name(key: str, label: str) -> None:
    """A label names its image folder: refuse what a file system would misread."""
    if not label or label in (".", "..") or _BAD_LABEL_CHARS.search(label):
        raise ConfigError(key, f"label {label!r} cannot name an image folder", "use plain words")


def _check_no_duplicates(key: str, labels: list[str]) -> None:
    """Refuse a label listed twice, compared case-insensitively."""
    lowered = [x.lower() for x in labels]
    dup = sorted({x for x in lowered if lowered.count(x) > 1})
    if dup:
        # same_label() compares case-insensitively, so these would be one answer.
        raise ConfigError(
            key, f"label {dup[0]!r} is listed twice (case-insensitively)", "list each label once"
        )
