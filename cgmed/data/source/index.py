"""The compact per-subset index (:class:`SubsetIndex`) and reading records back through it.

An index holds, per record, its file, byte offset, label and split (~15 bytes), built in one
streaming pass; :func:`raw_records_at` reads the picked records again by offset. Subsets without
a test file are split 9:1 by :func:`in_hashed_test_split`.

Offsets are only as good as the file they were read from: an index keeps each file's size and
modification time (:class:`FileStamp`) from when it was read, and reading records back refuses
a file whose stamp changed, naming it, instead of reading whatever now sits at an old offset.
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
from cgmed.data.source.bad import BadSample
from cgmed.data.subsets import SubsetInfo
from cgmed.errors import DataError


@dataclass(frozen=True)
class FileStamp:
    """A file's size and modification time: what says its byte offsets still hold."""

    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> FileStamp:
        """The stamp of ``path`` now; DataError naming it when it cannot be read (gone, no permission)."""
        try:
            stat = path.stat()
        except OSError as err:
            raise DataError(str(path), f"cannot be read: {err.strerror}") from None
        return cls(stat.st_size, stat.st_mtime_ns)

    def describe(self) -> str:
        return f"{self.size} bytes, modified at {self.mtime_ns / 1e9:.3f}"


@dataclass
class SubsetIndex:
    """Where each record of one subset lives, its label and its split; ~15 bytes per record."""

    info: SubsetInfo
    files: list[Path] = field(default_factory=list)
    stamps: list[FileStamp] = field(default_factory=list)  # per file, taken before it was read
    file_id: array = field(default_factory=lambda: array("H"))
    offset: array = field(default_factory=lambda: array("q"))
    label_id: array = field(default_factory=lambda: array("I"))
    is_test: bytearray = field(default_factory=bytearray)
    labels: list[str] = field(default_factory=list)
    has_test_file: bool = False
    _label_ids: dict[str, int] = field(default_factory=dict, repr=False)

    def add_file(self, path: Path) -> int:
        """Register a file, stamped now (before its records are read), and return its number."""
        self.files.append(path)
        self.stamps.append(FileStamp.of(path))
        return len(self.files) - 1

    def check_unchanged(self, file_no: int) -> None:
        """DataError naming the file when its size or modification time differ from its stamp."""
        path, then = self.files[file_no], self.stamps[file_no]
        now = FileStamp.of(path)
        if now != then:
            raise DataError(
                str(path),
                f"changed since it was indexed ({then.describe()}; now {now.describe()}), "
                "so the byte offsets of its records no longer hold",
                "do not rewrite data files while a build or run reads them; run again to index the new file",
            )

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


def claim_id(first_seen: dict[str, str], record_id: str, here: str, described: str) -> None:
    """Note ``record_id`` as seen ``here`` (e.g. ``record #3``); BadSample("duplicate record id")
    naming where it was seen first when it repeats.

    Sample ids are made from record ids, so two records with one id would be one sample twice
    in a manifest and in the leakage audit.
    """
    first = first_seen.setdefault(record_id, here)
    if first != here:
        raise BadSample("duplicate record id", f"{described} is also {first}")


def stale_record(path: Path, offset: int, err: Exception) -> DataError:
    """The error for a record that validated when indexed and no longer does when read back."""
    return DataError(
        str(path),
        f"the record at byte {offset} no longer reads as indexed ({err})",
        "the file changed after it was indexed: do not rewrite data files during a run; run again",
    )


def raw_records_at(index: SubsetIndex, positions: list[int]) -> Iterator[tuple[int, Path, int, Any]]:
    """``(position, file, offset, raw record)`` for index positions, read file by file in offset order.

    A file that changed since it was indexed, or an offset that no longer holds, is a DataError.
    """
    by_file: dict[int, list[int]] = {}
    for pos in positions:
        by_file.setdefault(index.file_id[pos], []).append(pos)
    for file_no, file_positions in sorted(by_file.items()):
        index.check_unchanged(file_no)
        path = index.files[file_no]
        in_order = sorted(file_positions, key=lambda pos: index.offset[pos])
        offsets = [index.offset[pos] for pos in in_order]
        for pos, (offset, record) in zip(in_order, read_records_at(path, offsets), strict=True):
            yield pos, path, offset, record
