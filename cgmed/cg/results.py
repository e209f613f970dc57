"""Typed results that the stages hand to the reports: built splits, evaluations, and the runs of
a CG target or of the pilot. A report reads subsets and numbers from fields, never from display
strings."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cgmed.cg.config import CGTarget
from cgmed.data.subsets import SubsetInfo


def subset_from_meta(entry: Mapping[str, Any]) -> SubsetInfo:
    """A subset as ``split_meta.json`` records it (``SubsetInfo.to_json``)."""
    return SubsetInfo(
        id=entry["id"],
        modality=entry["modality"],
        area=entry["area"],
        task=entry["task"],
        name=entry.get("name", ""),
        status=entry.get("status", ""),
        derived_from=entry.get("derived_from"),
    )


def subset_title(info: SubsetInfo) -> str:
    """``04 CT Lung Cancer``: how reports name a subset."""
    return " ".join((info.id, *info.triplet))


@dataclass(frozen=True)
class SplitSummary:
    """A built split as the stages read it back: its folder and its ``split_meta.json``."""

    directory: Path
    meta: dict[str, Any]

    @property
    def targets(self) -> list[SubsetInfo]:
        return [subset_from_meta(s) for s in self.meta["targets"]]

    @property
    def train_subsets(self) -> list[SubsetInfo]:
        return [subset_from_meta(s) for s in self.meta["train_subsets"]]

    @property
    def sizes(self) -> dict[str, int]:
        return self.meta["sizes"]

    @property
    def audit_passed(self) -> bool:
        return bool(self.meta["audit"]["passed"])

    @property
    def test_set_warnings(self) -> list[str]:
        """The build's warnings about its targets' test sets (too few questions to tell arms apart)."""
        return [info["warning"] for info in (self.meta.get("test_sets") or {}).values() if "warning" in info]

    def manifest(self, name: str) -> Path:
        """``train``, ``test``, ``seen_test`` or ``shots`` -> its ``.jsonl`` file."""
        return self.directory / f"{name}.jsonl"


@dataclass(frozen=True)
class Evaluation:
    """A finished evaluation: its ``results.json`` document and the folder holding its predictions."""

    results: dict[str, Any]
    directory: Path

    @property
    def overall(self) -> dict[str, Any]:
        return self.results["overall"]

    @property
    def predictions(self) -> Path:
        return self.directory / "predictions.jsonl"

    @property
    def method(self) -> str:
        """How the answers were read, as ``results.json`` records it (``option_scoring``,
        ``generation``, ``... (circular)``); boxes are always generated. ``unrecorded`` for a
        results.json written before evaluations said so."""
        if self.results.get("detection") and self.overall.get("n_det") == self.overall.get("n"):
            return str(self.results["detection"]["method"])
        return str(self.results.get("method", "unrecorded"))


@dataclass
class SeedRun:
    """The models one training seed gives a CG target, as evaluated."""

    trained: Evaluation  # on the target's test set
    baseline_plus: Evaluation | None = None  # the size-matched Unrelated control, same test set
    seen: Evaluation | None = None  # Trained on the test sets of the subsets it trained on
    trained_few_shot: dict[str, list[Evaluation]] | None = None  # shots per label -> one per draw
    # "trained" / "baseline_plus" -> its evaluation on the target by the second method (cg.second_method)
    second_method: dict[str, Evaluation] = field(default_factory=dict)


@dataclass
class TargetRun:
    """One CG target: its row of the config, its splits and (unless a dry run) its evaluations."""

    name: str
    spec: CGTarget
    related: SplitSummary
    unrelated: SplitSummary | None = None
    baseline: Evaluation | None = None  # the base model on the target's test set
    baseline_few_shot: dict[str, list[Evaluation]] | None = None
    baseline_second_method: Evaluation | None = None  # the base model by the second method
    seeds: dict[int, SeedRun] = field(default_factory=dict)

    @property
    def target(self) -> SubsetInfo:
        return self.related.targets[0]


@dataclass
class PilotSeedRun:
    """The pilot's models of one training seed, as evaluated."""

    multi_id: Evaluation | None = None  # Multi-task on the trained (ID) subsets' test sets
    multi_ood: Evaluation | None = None  # Multi-task on the test-only (OOD) subsets
    single: dict[str, Evaluation] = field(default_factory=dict)  # subset id -> its Single-task model


@dataclass
class PilotRun:
    """The pilot's evaluations: the untrained model, then each seed's models."""

    baseline_id: Evaluation
    baseline_ood: Evaluation | None = None
    seeds: dict[int, PilotSeedRun] = field(default_factory=dict)
