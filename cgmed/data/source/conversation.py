"""The reader of users' own conversation JSON / JSONL files (:class:`ConversationSource`).

Every file under ``data.root`` (or those in ``data.files``) is read once, in one pass, into the
indexes of all subsets it holds, and read again when a file's size or modification time changed;
the record format is in :mod:`cgmed.data.source.conversation_records`. Record ids repeat nowhere
within a subset; files without records are noted, and data without a usable record is an error.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

from cgmed.data.jsonio import iter_records
from cgmed.data.record import Sample
from cgmed.data.source.bad import BadSample, BadSamples
from cgmed.data.source.base import Source
from cgmed.data.source.config import DataConfig
from cgmed.data.source.conversation_records import ConversationRecord, parse_conversation_record
from cgmed.data.source.index import (
    FileStamp,
    SubsetIndex,
    claim_id,
    in_hashed_test_split,
    raw_records_at,
    stale_record,
)
from cgmed.data.subsets import CATALOG_FILE, SubsetInfo
from cgmed.errors import ConfigError, DataError

log = logging.getLogger(__name__)


class ConversationSource(Source):
    """Users' own data: LLaVA / ShareGPT style records with ``<image>`` tags and MAT fields.

    Each record: ``image`` (relative to data.root), ``modality``, ``area``, ``task``,
    ``conversations`` ([{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", "value": ...}])
    and optionally ``id``, ``subset``, ``split`` (train|test), ``label`` and ``data_no`` (the source
    dataset). A human turn that lists options (``A: x`` lines) is used as is, with the gpt answer
    a letter or an option's text; one without options is label-only, and the split builder writes
    its multiple-choice question.

    Box records (task ``Det``, no options): the gpt answer is a box ``{<x1><y1><x2><y2>}`` on the
    0-100 grid (MiniGPT-v2's format) and/or the record has ``bbox: [x1, y1, x2, y2]`` (they must
    agree); ``label`` names the finding (it balances sampling like any label; default ``object``).
    """

    def __init__(self, cfg: DataConfig, root: str | Path):
        self.cfg = cfg
        self.root = Path(root).expanduser()
        self.vocab = cfg.vocabulary()
        if not self.root.is_dir():
            raise ConfigError("data.root", f"{self.root} is not a directory")
        if cfg.files:
            self.paths = [self.root / f for f in cfg.files]
            for path in self.paths:
                if not path.is_file():
                    raise ConfigError("data.files", f"{path} does not exist")
        else:
            self.paths = sorted(
                path
                for path in self.root.rglob("*")
                if path.suffix in (".json", ".jsonl") and path.name != CATALOG_FILE
            )
        if not self.paths:
            raise ConfigError("data.root", f"no .json/.jsonl files under {self.root}", "set data.files=[...]")
        self._indexes: dict[str, SubsetIndex] | None = None
        self._stamps: list[FileStamp] = []
        # bad records found while reading every file; handed to the first index() caller only
        self._unreported_bad = BadSamples(cfg.max_bad_examples)

    def _all_indexes(self) -> dict[str, SubsetIndex]:
        """The indexes of every subset, built in one pass over all files on first use and again
        whenever a file's size or modification time changed (one source serves several targets
        of a run, and offsets into a rewritten file would read other records)."""
        if self._indexes is not None:
            if [FileStamp.of(path) for path in self.paths] == self._stamps:
                return self._indexes
            log.info("data files under %s changed since they were indexed; indexing them again", self.root)
        self._stamps = [FileStamp.of(path) for path in self.paths]
        self._unreported_bad = BadSamples(self.cfg.max_bad_examples)
        indexes: dict[str, SubsetIndex] = {}
        first_seen: dict[str, dict[str, str]] = {}  # subset -> record id -> where it was read first
        records_per_file = [
            self._index_file(indexes, file_no, path, first_seen) for file_no, path in enumerate(self.paths)
        ]
        if not indexes:
            raise self._no_usable_records(records_per_file)
        self._indexes = dict(sorted(indexes.items()))
        return self._indexes

    def _index_file(
        self, indexes: dict[str, SubsetIndex], file_no: int, path: Path, first_seen: dict[str, dict[str, str]]
    ) -> int:
        """Add one file's records to ``indexes`` (bad ones to the unreported bad samples); returns how many it holds."""
        n = -1
        for n, (offset, raw) in enumerate(iter_records(path)):
            where = f"{path.name} record #{n}"
            try:
                record = parse_conversation_record(raw, self.vocab)
                idx = self._subset_index(indexes, record)
                if record.id:
                    seen = first_seen.setdefault(record.subset, {})
                    claim_id(seen, record.id, where, f"id {record.id!r} of subset {record.subset}")
            except BadSample as err:
                self._unreported_bad.add(where, err)
                continue
            if record.split is not None:
                test = record.split == "test"
                idx.has_test_file = idx.has_test_file or test
            else:
                test = in_hashed_test_split(
                    self.cfg.split_seed, record.subset, record.image, self.cfg.test_fraction
                )
            idx.add(file_no, offset, record.label, test)
        if n < 0:
            self._unreported_bad.note(str(path), "empty data file", "holds no records; remove it or fill it")
        return n + 1

    def _no_usable_records(self, records_per_file: list[int]) -> DataError:
        """The error for data files that hold no usable record at all: which are empty, which only bad."""
        parts = [
            f"{path.name} is empty" if count == 0 else f"{path.name} holds {count} record(s), none usable"
            for path, count in zip(self.paths, records_per_file, strict=True)
        ]
        bad = self._unreported_bad
        reasons = f" ({', '.join(f'{r}: {c}' for r, c in sorted(bad.counts.items()))})" if bad.total else ""
        fix = "point data.root (or data.files) at files with records"
        return DataError(
            str(self.root),
            f"no records in the data files: {'; '.join(parts)}{reasons}",
            f"{fix}\n{bad.report()}" if bad.total else fix,
        )

    def _subset_index(self, indexes: dict[str, SubsetIndex], record: ConversationRecord) -> SubsetIndex:
        """The index of the record's subset (new on its first record); BadSample if the triplets differ."""
        sid = record.subset
        idx = indexes.get(sid)
        if idx is None:
            info = SubsetInfo(sid, record.modality, record.area, record.task, sid.replace("_", " "), "ID")
            idx = indexes[sid] = SubsetIndex(info=info, files=list(self.paths), stamps=list(self._stamps))
        elif idx.info.triplet != record.triplet:
            raise BadSample(
                "malformed record",
                f"subset {sid!r} is {' '.join(idx.info.triplet)} elsewhere, but this record says "
                f"{' '.join(record.triplet)}",
            )
        return idx

    def subsets(self) -> dict[str, SubsetInfo]:
        return {sid: idx.info for sid, idx in self._all_indexes().items()}

    def index(self, subset: str, bad: BadSamples) -> SubsetIndex:
        indexes = self._all_indexes()
        # Bad records (and notes) are found once, when every file is read; report them once.
        if self._unreported_bad.total or self._unreported_bad.notes:
            bad.merge(self._unreported_bad)
            self._unreported_bad = BadSamples(self.cfg.max_bad_examples)
        return indexes[subset]

    def load(self, index: SubsetIndex, positions: list[int]) -> Iterator[tuple[int, Sample]]:
        info = index.info
        for pos, path, offset, raw in raw_records_at(index, positions):
            try:
                record = parse_conversation_record(raw, self.vocab)
            except BadSample as err:
                raise stale_record(path, offset, err) from None
            record_id = record.id or f"{path.stem}@{offset}"
            sample = Sample(
                id=f"{info.id}-{record_id}",
                subset=info.id,
                modality=info.modality,
                area=info.area,
                task=info.task,
                image=str(self.resolve_image(record.image)),
                label=record.label,
                question=record.instruction,
                options=record.options,
                answer=record.answer,
                source_split="test" if index.is_test[pos] else "train",
                data_no=record.data_no,
                box=record.box,
            )
            yield pos, sample
