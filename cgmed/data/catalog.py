"""The catalog of a data root: which MAT subsets exist, their triplets, sizes and labels.

Each entry also says why its task tag was chosen when the tag is an inference (``tag_reason``),
and the catalog keeps the bad samples and notes found while counting.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cgmed.data.source import BadSamples, Source
from cgmed.data.subsets import SubsetInfo


@dataclass
class SubsetEntry:
    """One subset of the catalog: its triplet, sample counts per split and per label."""

    info: SubsetInfo
    train: int
    test: int
    has_test_file: bool
    labels: dict[str, dict[str, int]] = field(default_factory=dict)  # label -> {"train": n, "test": n}

    def to_json(self) -> dict[str, Any]:
        info = self.info
        return {
            "id": info.id,
            "modality": info.modality,
            "area": info.area,
            "task": info.task,
            "name": info.name,
            "status": info.status,
            "tag_reason": info.tag_reason,
            "train": self.train,
            "test": self.test,
            "test_file": self.has_test_file,
            "labels": self.labels,
        }


@dataclass
class Catalog:
    """Every subset of a data root with its counts, and the bad samples found while counting."""

    root: str
    subsets: dict[str, SubsetEntry]
    bad: BadSamples

    def to_json(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "subsets": [entry.to_json() for entry in self.subsets.values()],
            "totals": {
                "subsets": len(self.subsets),
                "train": sum(entry.train for entry in self.subsets.values()),
                "test": sum(entry.test for entry in self.subsets.values()),
            },
            "bad_samples": self.bad.summary(),
        }

    def write(self, path: str | Path) -> None:
        Path(path).write_text(
            json.dumps(self.to_json(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
        )

    def table(self, max_labels: int = 4) -> str:
        """A fixed-width table, one line per subset (columns as wide as their longest value)."""
        infos = [entry.info for entry in self.subsets.values()]
        w = {
            key: max([minimum, *(len(getattr(i, key)) + 1 for i in infos)])
            for key, minimum in (("id", 6), ("modality", 9), ("area", 11), ("task", 12))
        }
        head = (
            f"{'id':<{w['id']}}{'modality':<{w['modality']}}{'area':<{w['area']}}{'task':<{w['task']}}"
            f"{'status':<7}{'train':>9}{'test':>8}  labels"
        )
        lines = [head, "-" * len(head)]
        for entry in self.subsets.values():
            info = entry.info
            names = list(entry.labels)
            shown = ", ".join(names[:max_labels]) + (
                f", ... (+{len(names) - max_labels})" if len(names) > max_labels else ""
            )
            lines.append(
                f"{info.id:<{w['id']}}{info.modality:<{w['modality']}}{info.area:<{w['area']}}"
                f"{info.task:<{w['task']}}{info.status:<7}"
                f"{entry.train:>9}{entry.test:>8}  "
                f"[{len(names)}] {shown}"
            )
        totals = self.to_json()["totals"]
        notes = f"; notes: {self.bad.notes_line()}" if self.bad.notes else ""
        lines.append(
            f"{totals['subsets']} subsets, {totals['train']} train + {totals['test']} test samples; "
            f"bad samples: {self.bad.total}{notes}"
        )
        inferred = [entry.info for entry in self.subsets.values() if entry.info.tag_reason]
        if inferred:
            lines.append("inferred task tags:")
            lines += [f"  {info.id} {info.task}: {info.tag_reason}" for info in inferred]
        return "\n".join(lines)


def build_catalog(source: Source, max_bad_examples: int = 10) -> Catalog:
    """Index every subset once (streaming) and keep only counts; memory stays per-subset."""
    bad = BadSamples(max_bad_examples)
    entries: dict[str, SubsetEntry] = {}
    for sid in source.subsets():
        idx = source.index(sid, bad)
        train, test = idx.label_counts("train"), idx.label_counts("test")
        labels = {
            label: {"train": train.get(label, 0), "test": test.get(label, 0)}
            for label in sorted(idx.labels, key=str.lower)
        }
        entries[sid] = SubsetEntry(
            idx.info, sum(train.values()), sum(test.values()), idx.has_test_file, labels
        )
    return Catalog(str(source.root), entries, bad)
