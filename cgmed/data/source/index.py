"""The compact per-subset index (:class:`SubsetIndex`) and reading records back through it.

An index holds, per record, its file, byte offset, label and split (~15 bytes), built in one
streaming pass; :func:`raw_records_at` reads the picked records again by offset. Subsets without
a test file are split 9:1 by :func:`in_hashed_test_split`.
"""

from __future__ import annotations

from array import array
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cgmed.data.jsonio import read_records_at
from cgmed.data.record import stable_int
from cgmed.data.subsets import SubsetInfo


@dataclass
class SubsetIndex:
    """Where each record of one subset lives, its label and its split; ~15 bytes per record."""

    info: SubsetInfo
    files: list[Path] = field(default_factory=list)
    file_id: array = field(default_factory=lambda: array("H"))
    offset: array = field(default_factory=lambda: array("q"))
    label_id: array = field(default_factory=lambda: array("I"))
    is_test: bytearray = field(default_factory=bytearray)
    labels: list[str] = field(default_factory=list)
    has_test_file: bool = False
    _label_ids: dict[str, int] = field(default_factory=dict, repr=False)

    def add(self, file_no: int, offset: int, label: str, test: bool) -> None:
        label_no = self._label_ids.get(label)
        if label_no is None:
            label_no = self._label_ids[label] = len(self.labels)
            self.labels.append(label)
        self.file_id.append(file_no)
        self.offset.append(offset)
        self.label_id.append(label_no)
        self.is_test.append(1 if test else 0)

    def __len__(self) -> int:
        return len(self.offset)

    def positions(self, split: str) -> list[int]:
        """Index positions of the records of ``split`` (``train`` or ``test``)."""
        want = 1 if split == "test" else 0
        return [pos for pos, test in enumerate(self.is_test) if test == want]

    def label_counts(self, split: str) -> Counter:
        """Records per label in ``split``."""
        want = 1 if split == "test" else 0
        counts: Counter = Counter()
        for label_no, test in zip(self.label_id, self.is_test, strict=True):
            if test == want:
                counts[self.labels[label_no]] += 1
        return counts


def in_hashed_test_split(split_seed: int, subset: str, image: str, test_fraction: float) -> bool:
    """The 9:1 rule for subsets without a test file: a stable hash of the image path.

    Hashing the image (not the record) keeps every copy of one image on the same side.
    """
    return stable_int("split", split_seed, subset, image) % 10_000 < round(test_fraction * 10_000)


def raw_records_at(index: SubsetIndex, positions: list[int]) -> Iterator[tuple[int, Path, int, Any]]:
    """``(position, file, offset, raw record)`` for index positions, read file by file in offset order."""
    by_file: dict[int, list[int]] = {}
    for pos in positions:
        by_file.setdefault(index.file_id[pos], []).append(pos)
    for file_no, file_positions in sorted(by_file.items()):
        path = index.files[file_no]
        in_order = sorted(file_positions, key=lambda pos: index.offset[pos])
        offsets = [index.offset[pos] for pos in in_order]
        for pos, (offset, record) in zip(in_order, read_records_at(path, offsets), strict=True):
            yield pos, path, offset, record
