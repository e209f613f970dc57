"""Opening one ``data.hf.datasets`` entry with ``datasets``: where it is, which builder reads it,
which of its splits are train and test, and whether the configured columns exist.

The image column is cast to ``Image(decode=False)``: rows then carry the stored bytes (or a file
path), and nothing is decoded until a split picks the row. Local Parquet files are read directly
with pyarrow (``datasets`` only tells which files are which split), so memory stays flat in the row
count. Other datasets that are not ``save_to_disk`` folders are read by ``datasets.load_dataset``,
which keeps its Arrow copy under ``data.cache_dir/hf-datasets`` and memory-maps it (or, with
``streaming``, reads the source anew).
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image as PILImage

from cgmed.data.source.config import HfDataset
from cgmed.data.source.hf_rows import DatasetsSplit, ParquetSplit, SplitRows
from cgmed.data.vocab import ELEMENT_KINDS
from cgmed.errors import ConfigError, DataError

SAVE_TO_DISK = "save_to_disk"
# data files by suffix, in the order a folder holding several kinds is read as
_DATA_FILE_BUILDERS = {".parquet": "parquet", ".arrow": "arrow", ".json": "json", ".jsonl": "json"}
_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")


@dataclass
class SplitPart:
    """One source split of an opened dataset and the side it was mapped to."""

    split: str
    test: bool | None  # None: no split is mapped to test, the 9:1 hash split decides
    rows: SplitRows  # its rows, the image column not decoded


@dataclass
class OpenedDataset:
    """An entry opened: how it was read, and its splits that the subset uses."""

    location: str  # the local path or hub id that was opened
    builder: str  # save_to_disk, a datasets builder name, or "hub"
    base_dir: Path | None  # where relative image paths of rows are read from (local datasets)
    parts: list[SplitPart]

    @property
    def has_test_split(self) -> bool:
        return any(part.test for part in self.parts)


def describe(entry: HfDataset) -> str:
    """How errors name a dataset: its id and path."""
    return f"hf dataset {entry.id!r} ({entry.path})"


def open_hf_dataset(entry: HfDataset, key: str, root: Path, cache_dir: Path) -> OpenedDataset:
    """Open ``entry`` (``key`` is its config key, ``data.hf.datasets[i]``): load it, map its splits
    and check its columns. ConfigError names the key to fix; DataError what ``datasets`` refused."""
    location, local = _locate(entry, key, root)
    builder = entry.builder or (_infer_builder(Path(location), key) if local else "hub")
    if builder == "parquet" and local and not entry.streaming:
        splits = _parquet_splits(entry, key, location, cache_dir)
    else:
        splits = {
            name: DatasetsSplit(dataset)
            for name, dataset in _load(entry, key, location, builder, cache_dir).items()
        }
    parts = [
        SplitPart(split, test, _image_bytes_only(entry, key, split, splits[split]))
        for split, test in _map_splits(entry, key, list(splits))
    ]
    base = Path(location) if local else None
    base_dir = base if base is None or base.is_dir() else base.parent
    return OpenedDataset(location, builder, base_dir, parts)


def _locate(entry: HfDataset, key: str, root: Path) -> tuple[str, bool]:
    """The path to open (absolute when local) and whether it is local (else a hub id)."""
    path = Path(entry.path).expanduser()
    local = path if path.is_absolute() else root / path
    if glob.has_magic(entry.path):
        if not glob.glob(str(local), recursive=True):
            raise ConfigError(f"{key}.path", f"no file matches {str(local)!r}", "check the pattern")
        return str(local), True
    if local.exists():
        return str(local), True
    if entry.builder is None and _HUB_ID.match(entry.path) and not Path(entry.path).suffix:
        return entry.path, False
    raise ConfigError(
        f"{key}.path",
        f"{local} does not exist (and {entry.path!r} is no hub id)",
        "give a save_to_disk folder, data file(s), an image folder or a hub id (owner/name)",
    )


def _infer_builder(path: Path, key: str) -> str:
    """The builder of a local path: a save_to_disk folder, data files by suffix, else an image folder."""
    if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
        return SAVE_TO_DISK
    files = [path] if path.is_file() else [Path(name) for name in glob.glob(str(path), recursive=True)]
    suffixes: set[str] = set()
    for item in files:
        if item.is_dir():
            for _, _, names in os.walk(item):
                suffixes.update(os.path.splitext(name)[1].lower() for name in names)
        else:
            suffixes.add(item.suffix.lower())
    for suffix, builder in _DATA_FILE_BUILDERS.items():
        if suffix in suffixes:
            return builder
    if suffixes & set(PILImage.registered_extensions()):
        return "imagefolder"
    raise ConfigError(
        f"{key}.builder",
        f"cannot tell how to read {path} (no save_to_disk folder, data file or image found)",
        "set it to a datasets builder name (parquet, arrow, json, csv, imagefolder, ...)",
    )


def _load(entry: HfDataset, key: str, location: str, builder: str, cache_dir: Path) -> dict[str, Any]:
    """The dataset's splits by name, as ``datasets`` opens them."""
    import datasets

    try:
        if builder == SAVE_TO_DISK:
            opened = datasets.load_from_disk(location)
        else:
            kwargs: dict[str, Any] = {"cache_dir": str(cache_dir), "streaming": entry.streaming}
            if builder == "hub":
                opened = datasets.load_dataset(location, entry.config_name, **kwargs)
            else:
                place = "data_dir" if Path(location).is_dir() else "data_files"
                opened = datasets.load_dataset(builder, entry.config_name, **{place: location}, **kwargs)
    except Exception as err:  # datasets raises many types for a path or hub id it cannot read
        raise _not_opened(entry, key, builder, err) from None
    if isinstance(opened, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        splits = dict(opened.items())
    else:
        splits = {"train": opened}
    if builder == SAVE_TO_DISK and entry.streaming:
        splits = {name: part.to_iterable_dataset() for name, part in splits.items()}
    return splits


def _parquet_splits(entry: HfDataset, key: str, location: str, cache_dir: Path) -> dict[str, ParquetSplit]:
    """Local Parquet files by split, as ``datasets`` would name them (``train-*`` / ``test-*`` files,
    ``train/`` / ``test/`` folders), with the features their schema records; nothing is converted."""
    import datasets
    import pyarrow.parquet as pq

    place = "data_dir" if Path(location).is_dir() else "data_files"
    try:
        builder = datasets.load_dataset_builder(
            "parquet", entry.config_name, **{place: location}, cache_dir=str(cache_dir)
        )
        files = {
            str(name): [str(file) for file in found] for name, found in builder.config.data_files.items()
        }
        schemas = {name: pq.read_schema(found[0]) for name, found in files.items() if found}
    except Exception as err:  # datasets / pyarrow raise many types for files they cannot read
        raise _not_opened(entry, key, "parquet", err) from None
    return {
        name: ParquetSplit(files[name], datasets.Features.from_arrow_schema(schema), entry.image_column)
        for name, schema in schemas.items()
    }


def _not_opened(entry: HfDataset, key: str, builder: str, err: Exception) -> DataError:
    offline = (
        " (HF_HUB_OFFLINE is set: only cached hub datasets open)" if os.environ.get("HF_HUB_OFFLINE") else ""
    )
    return DataError(
        f"{describe(entry)}, {key}",
        f"cannot be opened as {builder}: {type(err).__name__}: {err}{offline}",
        f"check {key}.path and {key}.builder",
    )


def _map_splits(entry: HfDataset, key: str, available: list[str]) -> list[tuple[str, bool | None]]:
    """``(source split, is test)`` for each split the subset reads (``is test`` None: the hash decides)."""
    train, test = entry.split_names("train"), entry.split_names("test")
    if not entry.splits:
        test = ["test"] if "test" in available else []
        candidates = [s for s in available if s != "test"]
        if "train" in available:
            train = ["train"]
        elif len(candidates) == 1:
            train = candidates
        else:
            raise ConfigError(
                f"{key}.splits",
                f"{describe(entry)} has no 'train' split to default to (splits: {available})",
                f"map them: {key}.splits={{train: NAME, test: NAME}}",
            )
    for side, names in (("train", train), ("test", test)):
        for name in names:
            if name not in available:
                raise ConfigError(
                    f"{key}.splits.{side}",
                    f"{describe(entry)} has no split {name!r}; its splits: {available}",
                    "name one of them",
                )
    both = sorted(set(train) & set(test))
    if both:
        raise ConfigError(
            f"{key}.splits", f"split(s) {both} are mapped to both train and test", "map each once"
        )
    return [(name, (False if test else None)) for name in train] + [(name, True) for name in test]


def _image_bytes_only(entry: HfDataset, key: str, split: str, rows: SplitRows) -> SplitRows:
    """``rows`` with its columns checked and its image column left undecoded (bytes or a path)."""
    import datasets
    import pyarrow as pa

    if isinstance(rows, DatasetsSplit) and rows.features is None:
        # a streamed source that states no features: read them from its first rows
        rows = DatasetsSplit(rows.dataset._resolve_features())
    features = rows.features
    columns = {"image_column": entry.image_column, "label_column": entry.label_column}
    columns.update({f"mat_columns.{kind}": getattr(entry.mat_columns, kind) for kind in ELEMENT_KINDS})
    for name, column in columns.items():
        if column is not None and column not in features:
            raise ConfigError(
                f"{key}.{name}",
                f"{describe(entry)}, split {split}, has no column {column!r}; its columns: {list(features)}",
                f"set {key}.{name} to one of them",
            )
    undecoded = datasets.Image(decode=False)
    try:
        if isinstance(rows, DatasetsSplit):
            return DatasetsSplit(rows.dataset.cast_column(entry.image_column, undecoded))
        stored = features.arrow_schema.field(entry.image_column).type
        undecoded.cast_storage(pa.array([], type=stored))  # what datasets' cast_column would refuse
        features[entry.image_column] = undecoded
        return rows
    except Exception as err:  # datasets raises ValueError / ArrowInvalid / TypeError for a wrong type
        raise ConfigError(
            f"{key}.image_column",
            f"column {entry.image_column!r} of {describe(entry)} holds {features[entry.image_column]}, "
            f"not images ({type(err).__name__}: {err})",
            "point it at an Image column or a column of image file paths",
        ) from None
