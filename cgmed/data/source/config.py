"""The ``data`` config group (:class:`DataConfig`): where samples come from and how bad ones are treated."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from cgmed.data.subsets import DerivedSubset
from cgmed.data.vocab import DEFAULT_TASK_MERGE, Vocabulary
from cgmed.errors import ConfigError


@dataclass
class DataConfig:
    """``data`` config group: where the samples come from and how bad ones are treated."""

    root: str | None = None  # a release or folder of conversation files; null = the synthetic world
    format: Literal["medmat", "conversation"] = "medmat"
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
    train_manifest: str | None = None  # a built train.jsonl (read by the trainer)
    test_manifest: str | None = None  # a built test.jsonl (read by the evaluator)

    def __post_init__(self) -> None:
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError("data.test_fraction", f"must be in (0, 1), got {self.test_fraction}")
        if self.max_bad_examples < 0:
            raise ConfigError("data.max_bad_examples", "must be >= 0")
        self._check_derived()

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
