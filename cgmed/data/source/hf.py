"""The reader of Hugging Face datasets (:class:`HfSource`, ``data.format=hf``), one subset per
``data.hf.datasets`` entry.

An entry's MAT triplet is fixed (``mat``) or read per row (``mat_columns``, mixed freely with fixed
elements): then every triplet found is a subset of its own, id ``<id>_<modality>_<area>_<task>``.
Indexing reads only the label and element columns (and, for the 9:1 hash split, the stored image
path), in Arrow batches, once per dataset, into one :class:`SubsetIndex` per subset: the source
split is the record's "file", its row number the "offset" (~15 bytes a row, whatever the images
weigh). Images are read when a split picks their rows, by row number (a streamed dataset is read
forward to them), and copied into the content-addressed image cache under ``data.cache_dir``
(:mod:`cgmed.data.source.hf_values`), which manifests point at.

Without a split mapped to test, a row's side is the 9:1 hash of its image's stored path (relative to
the dataset's folder), or of its split and row number when the image was stored without one.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cgmed.data.choices import make_options
from cgmed.data.record import Sample, rng_for
from cgmed.data.source.bad import BadSample, BadSamples
from cgmed.data.source.base import Source
from cgmed.data.source.config import DataConfig, HfDataset
from cgmed.data.source.hf_open import OpenedDataset, SplitPart, describe, open_hf_dataset
from cgmed.data.source.hf_values import ValueReader, cache_image, element_reader, image_bytes, label_reader
from cgmed.data.source.images import check_image
from cgmed.data.source.index import SubsetIndex, in_hashed_test_split
from cgmed.data.subsets import SubsetInfo, normalize_subset_id
from cgmed.data.vocab import ELEMENT_KINDS
from cgmed.errors import ConfigError, DataError

log = logging.getLogger(__name__)
_INDEX_BATCH = 10_000  # rows per Arrow batch while indexing


class HfSource(Source):
    """Datasets that ``datasets`` opens, each read as MAT subset(s) (module docstring)."""

    def __init__(self, cfg: DataConfig, root: str | Path):
        self.cfg = cfg
        self.root = Path(root).expanduser()
        self.vocab = cfg.vocabulary()
        if not self.root.is_dir():
            raise ConfigError(
                "data.root", f"{self.root} is not a directory", "relative data.hf paths start there"
            )
        cache = Path(cfg.cache_dir).expanduser()
        self.image_cache, self.datasets_cache = cache / "hf-images", cache / "hf-datasets"
        self.entries: list[HfDataset] = list(cfg.hf.datasets)
        self._fixed = [self._fixed_elements(entry_no) for entry_no in range(len(self.entries))]
        self._subset_entry: dict[str, int] = {}
        self._indexes: dict[int, dict[str, SubsetIndex]] = {}
        self._unreported: dict[int, BadSamples] = {}  # bad rows of an entry, for its first index() caller
        self._parts: dict[str, tuple[HfDataset, OpenedDataset, SplitPart]] = {}  # by an index's file name

    def _key(self, entry_no: int) -> str:
        return f"data.hf.datasets[{entry_no}]"

    def _fixed_elements(self, entry_no: int) -> dict[str, str]:
        """The entry's fixed MAT elements, canonical (ConfigError naming the key for an unknown one)."""
        mat = self.entries[entry_no].mat
        return {
            kind: self.vocab.canonical(kind, name, f"{self._key(entry_no)}.mat.{kind}")
            for kind in ELEMENT_KINDS
            if (name := getattr(mat, kind)) is not None
        }

    def _info(self, entry_no: int, triplet: tuple[str, ...]) -> SubsetInfo:
        entry = self.entries[entry_no]
        subset_id = normalize_subset_id(entry.id)
        if len(self._fixed[entry_no]) < len(ELEMENT_KINDS):
            subset_id = "_".join((subset_id, *triplet))
        modality, area, task = triplet
        name = entry.name or f"{entry.id} ({entry.path})"
        return SubsetInfo(subset_id, modality, area, task, name, entry.status)

    def subsets(self) -> dict[str, SubsetInfo]:
        found: dict[str, SubsetInfo] = {}
        for entry_no in range(len(self.entries)):
            fixed = self._fixed[entry_no]
            if len(fixed) == len(ELEMENT_KINDS):
                infos = [self._info(entry_no, tuple(fixed[kind] for kind in ELEMENT_KINDS))]
            else:  # the triplets are in the rows: read them
                infos = [index.info for index in self._entry_indexes(entry_no).values()]
            for info in infos:
                other = self._subset_entry.setdefault(info.id, entry_no)
                if other != entry_no:
                    raise ConfigError(
                        f"{self._key(entry_no)}.id",
                        f"subset id {info.id!r} is also a subset of {self._key(other)}",
                        "give the datasets other ids",
                    )
                found[info.id] = info
        return dict(sorted(found.items()))

    def index(self, subset: str, bad: BadSamples) -> SubsetIndex:
        if subset not in self._subset_entry:
            self.subsets()
        entry_no = self._subset_entry.get(subset)
        if entry_no is None:
            raise ConfigError(
                "split", f"no subset {subset!r} in data.hf.datasets", f"ids: {sorted(self._subset_entry)}"
            )
        indexes = self._entry_indexes(entry_no)
        # bad rows are found once, when the dataset is read; report them once
        unreported = self._unreported.pop(entry_no, None)
        if unreported is not None:
            bad.merge(unreported)
        return indexes[subset]

    def _entry_indexes(self, entry_no: int) -> dict[str, SubsetIndex]:
        """The indexes of an entry's subsets, from one pass over the rows of the splits it reads."""
        if entry_no in self._indexes:
            return self._indexes[entry_no]
        entry = self.entries[entry_no]
        opened = open_hf_dataset(entry, self._key(entry_no), self.root, self.datasets_cache)
        log.info("%s: opened %s as %s", describe(entry), opened.location, opened.builder)
        files = [Path(f"{entry.id}:{part.split}") for part in opened.parts]
        for file, part in zip(files, opened.parts, strict=True):
            self._parts[str(file)] = (entry, opened, part)
        indexes: dict[str, SubsetIndex] = {}

        def subset_index(triplet: tuple[str, ...]) -> SubsetIndex:
            info = self._info(entry_no, triplet)
            if info.id not in indexes:
                indexes[info.id] = SubsetIndex(info=info, files=files, has_test_file=opened.has_test_split)
            return indexes[info.id]

        fixed = self._fixed[entry_no]
        if len(fixed) == len(ELEMENT_KINDS):
            subset_index(tuple(fixed[kind] for kind in ELEMENT_KINDS))
        bad = self._unreported[entry_no] = BadSamples(self.cfg.max_bad_examples)
        for file_no, part in enumerate(opened.parts):
            for row, triplet, label, hash_key in self._read_rows(entry_no, opened, part, bad):
                index = subset_index(triplet)
                test = part.test
                if test is None:
                    test = in_hashed_test_split(
                        self.cfg.split_seed, index.info.id, hash_key, self.cfg.test_fraction
                    )
                index.add(file_no, row, label, test)
        self._indexes[entry_no] = dict(sorted(indexes.items()))
        return self._indexes[entry_no]

    def _readers(self, entry_no: int, features: Any) -> tuple[ValueReader, dict[str, ValueReader]]:
        """The label reader and the readers of the elements read from columns."""
        entry, key = self.entries[entry_no], self._key(entry_no)
        label = label_reader(features[entry.label_column], entry.label_column, f"{key}.label_column")
        elements = {}
        for kind in ELEMENT_KINDS:
            column = getattr(entry.mat_columns, kind)
            if kind not in self._fixed[entry_no]:
                elements[kind] = element_reader(
                    features[column], kind, column, f"{key}.mat_columns.{kind}", self.vocab
                )
        return label, elements

    def _read_rows(
        self, entry_no: int, opened: OpenedDataset, part: SplitPart, bad: BadSamples
    ) -> Iterator[tuple[int, tuple[str, ...], str, str]]:
        """``(row, triplet, label, hash key)`` of each usable row of ``part``, in one pass over the
        label and element columns (the hash key, for the 9:1 split, only when no test split is mapped)."""
        entry = self.entries[entry_no]
        read_label, read_element = self._readers(entry_no, part.rows.features)
        element_columns = {kind: getattr(entry.mat_columns, kind) for kind in read_element}
        hashed = part.test is None
        columns = [entry.label_column, *element_columns.values(), *([entry.image_column] if hashed else [])]
        row = 0
        for batch in part.rows.column_batches(list(dict.fromkeys(columns)), _INDEX_BATCH):
            labels = batch.column(entry.label_column).to_pylist()
            values = {kind: batch.column(column).to_pylist() for kind, column in element_columns.items()}
            paths = _stored_paths(batch.column(entry.image_column)) if hashed else []
            for i, value in enumerate(labels):
                try:
                    label = read_label(value)
                    found = {kind: read(values[kind][i]) for kind, read in read_element.items()}
                except BadSample as err:
                    bad.add(f"{describe(entry)}, split {part.split} row {row + i}", err)
                    continue
                triplet = tuple({**self._fixed[entry_no], **found}[kind] for kind in ELEMENT_KINDS)
                key = _hash_key(paths[i], opened.base_dir, part.split, row + i) if hashed else ""
                yield row + i, triplet, label, key
            row += batch.num_rows
        if row == 0:
            bad.note(describe(entry), "empty dataset split", f"split {part.split} holds no rows")

    def load(self, index: SubsetIndex, positions: list[int]) -> Iterator[tuple[int, Sample]]:
        """The samples at ``positions``; a row whose image cannot be read is a DataError naming it."""
        for pos, where, sample, err in self._samples(index, positions, verify=False):
            if err is not None:
                raise DataError(
                    where, str(err), "fix or drop the row (data.on_bad_sample=skip leaves it out)"
                )
            yield pos, sample

    def load_checked(
        self, index: SubsetIndex, positions: list[int], bad: BadSamples
    ) -> Iterator[tuple[int, Sample]]:
        """``load`` with the image checks of ``data.verify_images``; bad rows are counted, not yielded."""
        for pos, where, sample, err in self._samples(index, positions, verify=self.cfg.verify_images):
            if err is not None:
                bad.add(where, err)
                continue
            yield pos, sample

    def _samples(
        self, index: SubsetIndex, positions: list[int], verify: bool
    ) -> Iterator[tuple[int, str, Any, BadSample | None]]:
        """``(position, where, sample or None, error or None)`` for ``positions``, split by split in row
        order; each image is copied into the cache (and, with ``verify``, decoded there completely)."""
        by_file: dict[int, list[int]] = {}
        for pos in positions:
            by_file.setdefault(index.file_id[pos], []).append(pos)
        for file_no, chosen in sorted(by_file.items()):
            entry, opened, part = self._parts[str(index.files[file_no])]
            chosen.sort(key=lambda pos: index.offset[pos])
            rows = [index.offset[pos] for pos in chosen]
            images = part.rows.images_at(entry.image_column, rows, f"{describe(entry)}, split {part.split}")
            for pos, image in zip(chosen, images, strict=True):
                where = f"{describe(entry)}, split {part.split} row {index.offset[pos]}"
                try:
                    data, suffix = image_bytes(image, opened.base_dir, entry.image_column)
                    cached = cache_image(data, suffix, self.image_cache)
                    if verify:
                        check_image(cached, self.image_cfg)
                except BadSample as err:
                    yield pos, where, None, err
                    continue
                yield pos, where, self._sample(index, pos, part.split, cached, entry), None

    def _sample(self, index: SubsetIndex, pos: int, split: str, image: Path, entry: HfDataset) -> Sample:
        """The sample of a row: options written here only for an entry's own ``question``."""
        info = index.info
        sample = Sample(
            id=f"{info.id}-{split}-{index.offset[pos]}",
            subset=info.id,
            modality=info.modality,
            area=info.area,
            task=info.task,
            image=str(image),
            label=index.labels[index.label_id[pos]],
            source_split="test" if index.is_test[pos] else "train",
        )
        if entry.question is not None:
            # the entry's own instruction(s), as a source's own question (split.options.mode=keep keeps it)
            rng = rng_for(self.cfg.split_seed, "question", sample.id)
            texts = [entry.question] if isinstance(entry.question, str) else entry.question
            sample.question = rng.choice(texts)
            try:
                sample.options, sample.answer = make_options(sample.label, index.labels, rng)
            except ValueError as err:
                raise DataError(
                    f"subset {info.id}", f"cannot write a multiple-choice question for {sample.id}: {err}"
                ) from None
        return sample


def _stored_paths(images: Any) -> list[str | None]:
    """The ``path`` field of an Arrow column of undecoded images (the bytes are not read)."""
    import pyarrow.compute as pc

    return pc.struct_field(images, "path").to_pylist()


def _hash_key(path: str | None, base_dir: Path | None, split: str, row: int) -> str:
    """What the 9:1 hash split hashes: the image's stored path (relative to the dataset's folder when
    it lies inside it), else the split and row number."""
    if not path:
        return f"{split}/{row}"
    if base_dir is not None and os.path.isabs(path):
        relative = os.path.relpath(path, base_dir)
        if not relative.startswith(".."):
            return Path(relative).as_posix()
    return path
