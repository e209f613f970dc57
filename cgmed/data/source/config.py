"""The ``data`` config group (:class:`DataConfig`): where samples come from and how bad ones are treated.

``data.hf`` (:class:`HfConfig`, one :class:`HfDataset` per subset) says which Hugging Face datasets
``data.format=hf`` reads and how their columns map onto MAT subsets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from cgmed.data.subsets import DerivedSubset
from cgmed.data.vocab import DEFAULT_TASK_MERGE, ELEMENT_KINDS, Vocabulary
from cgmed.errors import ConfigError


@dataclass
class MatElements:
    """One name per MAT element: the element itself (``mat``) or the column holding it (``mat_columns``)."""

    modality: str | None = None
    area: str | None = None
    task: str | None = None


@dataclass
class HfDataset:
    """One dataset ``datasets`` can open, read as a MAT subset (or one subset per triplet of ``mat_columns``).

    ``path``: a ``save_to_disk`` directory, a data file, a glob of them, a folder of them (``train-*`` /
    ``test-*`` file names, or ``train/`` / ``test/`` folders, give the official splits), a class-per-folder
    image folder, or a hub id; relative paths are read from ``data.root`` (else the working directory).
    ``builder``: null infers it (``save_to_disk``, ``parquet``, ``arrow``, ``json``, ``imagefolder``);
    any ``datasets`` builder name is passed to ``datasets.load_dataset``.
    """

    id: str
    path: str
    builder: str | None = None
    config_name: str | None = None  # a hub dataset's configuration (``load_dataset(path, name)``)
    # source split(s) per side, e.g. {train: [train, validation], test: test}; empty = "train" and
    # "test" when present; without a test side the 9:1 hash split of data.split_seed applies
    splits: dict[str, Any] = field(default_factory=dict)
    image_column: str = "image"
    label_column: str = "label"  # ClassLabel, string or number; a list of them is a multi-label set
    mat: MatElements = field(default_factory=MatElements)  # fixed elements
    mat_columns: MatElements = field(default_factory=MatElements)  # elements read per row
    # the instruction(s) of this subset's questions; null = the task's built-in instructions
    question: str | list[str] | None = None
    streaming: bool = False  # read as an IterableDataset (larger than the disk cache allows)
    name: str = ""  # shown in the catalog (default: the id and path)
    status: str = "ID"  # ID | OOD, as Med-MAT's subsets (split.train_status filters on it)

    def split_names(self, side: str) -> list[str]:
        """The source splits configured for ``side`` (``train`` / ``test``); [] when not configured."""
        names = self.splits.get(side)
        if names is None:
            return []
        return [str(n) for n in names] if isinstance(names, list) else [str(names)]


@dataclass
class HfConfig:
    """``data.hf``: the Hugging Face datasets of ``data.format=hf``, each entry one subset."""

    datasets: list[HfDataset] = field(default_factory=list)

    def __post_init__(self) -> None:
        ids = [entry.id for entry in self.datasets]
        if len(ids) != len(set(ids)):
            raise ConfigError("data.hf.datasets", f"ids repeat: {ids}", "give each dataset its own id")
        for i, entry in enumerate(self.datasets):
            _check_hf_dataset(entry, f"data.hf.datasets[{i}]")


def _check_hf_dataset(entry: HfDataset, key: str) -> None:
    """What one entry says on its own: an id and path, known split sides, each MAT element given once."""
    for name in ("id", "path"):
        if not str(getattr(entry, name)).strip():
            raise ConfigError(f"{key}.{name}", "is empty")
    unknown = sorted(set(entry.splits) - {"train", "test"})
    if unknown:
        raise ConfigError(f"{key}.splits.{unknown[0]}", "unknown side", "map source splits to train and test")
    if "train" in entry.splits and not entry.split_names("train"):
        raise ConfigError(f"{key}.splits.train", "names no split", "name the source split(s) to train on")
    for element in ELEMENT_KINDS:
        fixed, column = getattr(entry.mat, element), getattr(entry.mat_columns, element)
        if (fixed is None) == (column is None):
            raise ConfigError(
                f"{key}.mat.{element}",
                "is given both fixed and as a column" if fixed else "is not given",
                f"set {key}.mat.{element}=NAME or {key}.mat_columns.{element}=COLUMN (one of them)",
            )
    if isinstance(entry.question, list) and not entry.question:
        raise ConfigError(
            f"{key}.question", "is an empty list", "give instructions, or null for the built-in ones"
        )


@dataclass
class DataConfig:
    """``data`` config group: where the samples come from and how bad ones are treated."""

    # a release or folder of conversation files (null = the synthetic world); for format=hf, where
    # relative dataset paths start (null = the working directory)
    root: str | None = None
    format: Literal["medmat", "conversation", "hf"] = "medmat"
    files: list[str] = field(default_factory=list)  # conversation files under root (default: all)
    test_fraction: float = 0.1  # 9:1 train/test when a subset has no test file
    split_seed: int = 0  # fixes that 9:1 partition; a property of the data, not of an experiment
    on_bad_sample: Literal["fail", "skip"] = "fail"
    max_bad_examples: int = 10
    verify_images: bool = True
    # Directories outside the root that symlinks inside it may point to (e.g. an image folder
    # linked from another disk); any other link leaving the root is refused as an escape.
    linked_dirs: list[str] = field(default_factory=list)
    extra_elements: dict[str, list[str]] = field(default_factory=dict)
    task_merge: dict[str, list[str]] = field(default_factory=lambda: dict(DEFAULT_TASK_MERGE))
    cache_dir: str = "~/.cache/cgmed"  # where the synthetic world is generated when root is null
    # subsets made from part of another (by label, label share or source dataset); their parents
    # are hidden from selection rules unless keep_derived_sources (they hold the same images)
    derived: list[DerivedSubset] = field(default_factory=list)
    keep_derived_sources: bool = False
    hf: HfConfig = field(default_factory=HfConfig)  # the datasets of format=hf
    train_manifest: str | None = None  # a built train.jsonl (read by the trainer)
    test_manifest: str | None = None  # a built test.jsonl (read by the evaluator)

    def __post_init__(self) -> None:
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError("data.test_fraction", f"must be in (0, 1), got {self.test_fraction}")
        if self.max_bad_examples < 0:
            raise ConfigError("data.max_bad_examples", "must be >= 0")
        self._check_derived()
        if self.format == "hf" and not self.hf.datasets:
            raise ConfigError(
                "data.hf.datasets",
                "is empty with data.format=hf",
                "list the datasets: [{id: ..., path: ..., mat: ...}]",
            )

    def _check_derived(self) -> None:
        """What ``data.derived`` says on its own: unique ids, and a label share that can exist."""
        ids = [spec.id for spec in self.derived]
        if len(ids) != len(set(ids)):
            raise ConfigError("data.derived", f"ids repeat: {ids}", "give each derived subset its own id")
        for i, spec in enumerate(self.derived):
            key = f"data.derived[{i}]"
            share = spec.share
            if share is not None and not (share.parts >= 2 and 0 <= share.part < share.parts):
                raise ConfigError(
                    f"{key}.share",
                    f"part {share.part} of {share.parts}",
                    "need parts >= 2 and 0 <= part < parts",
                )
            if share is not None and spec.labels and share.label not in spec.labels:
                raise ConfigError(f"{key}.share.label", f"{share.label!r} is not among labels {spec.labels}")

    def vocabulary(self) -> Vocabulary:
        """The MAT vocabulary with this config's extra elements and task-merge rule."""
        return Vocabulary(extra=self.extra_elements, task_merge=self.task_merge)
