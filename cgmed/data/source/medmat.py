"""The Med-MAT release reader (:class:`MedMatSource`): subset files, the catalog file, index and load.

Files are ``ROOT/Aggregated_Subsets/Subset--NN-{train,test}.json`` (or beside them in ROOT), images
under ROOT. The 53 Med-MAT subsets are known by id; a ``cgmed_catalog.json`` in ROOT declares the
MAT triplets of any others (and extra MAT elements they use).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cgmed.data.jsonio import iter_records
from cgmed.data.record import Sample
from cgmed.data.source.bad import BadSample, BadSamples
from cgmed.data.source.base import Source
from cgmed.data.source.config import DataConfig
from cgmed.data.source.index import (
    SubsetIndex,
    claim_id,
    in_hashed_test_split,
    raw_records_at,
    stale_record,
)
from cgmed.data.source.medmat_records import parse_release_record
from cgmed.data.subsets import CATALOG_FILE, MEDMAT_SUBSETS, SubsetInfo, normalize_subset_id
from cgmed.data.vocab import ELEMENT_KINDS, Vocabulary
from cgmed.errors import ConfigError, DataError

_SPLITS = ("train", "test")
_SUBSET_FILE = re.compile(r"^Subset-+([A-Za-z0-9_]+?)-(train|test)\.jsonl?$")


class MedMatSource(Source):
    """Reader of ``ROOT/Aggregated_Subsets/Subset--NN-{train,test}.json`` with images under ROOT."""

    def __init__(self, cfg: DataConfig, root: str | Path):
        self.cfg = cfg
        self.root = Path(root).expanduser()
        self.vocab = cfg.vocabulary()
        if not self.root.is_dir():
            raise ConfigError(
                "data.root", f"{self.root} is not a directory", "point data.root at the release folder"
            )
        self._files = self._discover()
        self._declared = self._declarations()
        for sid, splits in self._files.items():
            if sid not in self._declared:
                raise DataError(
                    str(next(iter(splits.values()))),
                    f"subset {sid!r} is not a Med-MAT subset and {CATALOG_FILE} does not declare it",
                    f"rename the file, or declare the subset's MAT triplet in {self.root / CATALOG_FILE}",
                )

    def _discover(self) -> dict[str, dict[str, Path]]:
        """The subset files by subset id and split."""
        found: dict[str, dict[str, Path]] = {}
        for folder in (self.root / "Aggregated_Subsets", self.root):
            if not folder.is_dir():
                continue
            for path in sorted(folder.iterdir()):
                match = _SUBSET_FILE.match(path.name)
                if match:
                    found.setdefault(normalize_subset_id(match.group(1)), {}).setdefault(match.group(2), path)
        if not found:
            raise DataError(
                str(self.root),
                "no Subset--NN-train.json files found (looked in Aggregated_Subsets/ and the root)",
                "point data.root at the folder that holds Aggregated_Subsets/",
            )
        return dict(sorted(found.items()))

    def _declarations(self) -> dict[str, SubsetInfo]:
        """The subsets the catalog file declares (with its extra elements), else Med-MAT's own."""
        path = self.root / CATALOG_FILE
        if not path.exists():
            return dict(MEDMAT_SUBSETS)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            entries = doc["subsets"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise DataError(str(path), f"not a cgmed catalog file ({err})") from None
        extra = doc.get("elements") or {}
        if extra:
            merged = {k: sorted({*self.cfg.extra_elements.get(k, []), *v}) for k, v in extra.items()}
            self.vocab = Vocabulary(
                extra={**self.cfg.extra_elements, **merged}, task_merge=self.cfg.task_merge
            )
        declared: dict[str, SubsetInfo] = {}
        for i, entry in enumerate(entries):
            info = self._declared_subset(entry, f"{path}: subsets[{i}]")
            declared[info.id] = info
        return declared

    def _declared_subset(self, entry: dict[str, Any], where: str) -> SubsetInfo:
        """One subset of the catalog file; a Med-MAT subset declared as released keeps its tag reason."""
        try:
            sid = normalize_subset_id(entry["id"])
            triplet = tuple(self.vocab.canonical(kind, entry[kind], where) for kind in ELEMENT_KINDS)
        except KeyError as err:
            raise DataError(where, f"missing field {err}") from None
        except ConfigError as err:
            raise DataError(where, str(err)) from None
        known = MEDMAT_SUBSETS.get(sid)
        return SubsetInfo(
            sid,
            *triplet,
            name=str(entry.get("name", "")),
            status=str(entry.get("status", "ID")),
            tag_reason=known.tag_reason if known is not None and known.triplet == triplet else None,
        )

    def subsets(self) -> dict[str, SubsetInfo]:
        return {sid: self._declared[sid] for sid in self._files}

    def index(self, subset: str, bad: BadSamples) -> SubsetIndex:
        files = self._files[subset]
        idx = SubsetIndex(info=self.subsets()[subset], has_test_file="test" in files)
        for split in (split for split in _SPLITS if split in files):
            self._index_file(idx, files[split], split, bad)
        return idx

    def _index_file(self, idx: SubsetIndex, path: Path, split: str, bad: BadSamples) -> None:
        """One subset file into ``idx``: every record validated, ids unique in the file; notes for
        captions that differ from the answer and for a file without records."""
        file_no = idx.add_file(path)
        first_seen: dict[str, str] = {}
        n = -1
        for n, (offset, raw) in enumerate(iter_records(path)):
            rid = raw.get("id", "?") if isinstance(raw, dict) else "?"
            where = f"{path.name} record #{n} (id {rid})"
            try:
                record = parse_release_record(idx.info, raw)
                claim_id(first_seen, str(rid), f"record #{n}", f"id {rid}")
            except BadSample as err:
                bad.add(where, err)
                continue
            if record.caption is not None:
                bad.note(
                    where,
                    "caption differs from Answer",
                    f"caption {record.caption!r} differs from Answer {record.label!r} (kept as the sample's caption)",
                )
            if idx.has_test_file:
                test = split == "test"
            else:
                test = in_hashed_test_split(
                    self.cfg.split_seed, idx.info.id, record.image, self.cfg.test_fraction
                )
            idx.add(file_no, offset, record.label, test)
        if n < 0:
            bad.note(
                str(path), "empty subset file", "holds no records (an empty JSON array); remove it or fill it"
            )

    def load(self, index: SubsetIndex, positions: list[int]) -> Iterator[tuple[int, Sample]]:
        info = index.info
        for pos, path, offset, raw in raw_records_at(index, positions):
            file_split = "test" if path.name.endswith(("-test.json", "-test.jsonl")) else "train"
            try:
                record = parse_release_record(info, raw)
            except BadSample as err:
                raise stale_record(path, offset, err) from None
            sample = Sample(
                id=f"{info.id}-{file_split}-{raw['id']}",
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
                data_no=None if raw.get("data-no") is None else str(raw["data-no"]),
                box=record.box,
                caption=record.caption,
            )
            yield pos, sample
