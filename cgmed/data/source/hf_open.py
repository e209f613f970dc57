"""Opening one ``data.hf.datasets`` entry with ``datasets``: where it is, which builder reads it,
which of its splits are train and test, and whether the configured columns exist.

The image column is cast to ``Image(decode=False)``: rows then carry the stored bytes (or a file
path), and nothing is decoded until a split picks the row. Datasets that are not ``save_to_disk``
folders are read by ``datasets.load_dataset``, which keeps its Arrow copy under
``data.cache_dir/hf-datasets`` and memory-maps it (or, with ``streaming``, reads the source anew).
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
    dataset: Any  # datasets.Dataset or IterableDataset, image column not decoded


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
    splits = _load(entry, key, location, builder, cache_dir)
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

    where = f"{describe(entry)}, {key}"
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
        offline = (
            " (HF_HUB_OFFLINE is set: only cached hub datasets open)"
            if os.environ.get("HF_HUB_OFFLINE")
            else ""
        )
        raise DataError(
            where,
            f"cannot be opened as {builder}: {type(err).__name__}: {err}{offline}",
            f"check {key}.path and {key}.builder",
        ) from None
    if isinstance(opened, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        splits = dict(opened.items())
    else:
        splits = {"train": opened}
    if builder == SAVE_TO_DISK and entry.streaming:
        splits = {name: part.to_iterable_dataset() for name, part in splits.items()}
    return splits


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


def _image_bytes_only(entry: HfDataset, key: str, split: str, dataset: Any) -> Any:
    """``dataset`` with its columns checked and its image column left undecoded (bytes or a path)."""
    import datasets

    features = dataset.features
    if features is None:  # a streamed source that states no features: read them from its first rows
        dataset = dataset._resolve_features()
        features = dataset.features
    columns = {"image_column": entry.image_column, "label_column": entry.label_column}
    columns.update({f"mat_columns.{kind}": getattr(entry.mat_columns, kind) for kind in ELEMENT_KINDS})
    for name, column in columns.items():
        if column is not None and column not in features:
            raise ConfigError(
                f"{key}.{name}",
                f"{describe(entry)}, split {split}, has no column {column!r}; its columns: {list(features)}",
                f"set {key}.{name} to one of them",
            )
    try:
        return dataset.cast_column(entry.image_column, datasets.Image(decode=False))
    except Exception as err:  # datasets raises ValueError / ArrowInvalid / TypeError for a wrong type
        raise ConfigError(
            f"{key}.image_column",
            f"column {entry.image_column!r} of {describe(entry)} holds {features[entry.image_column]}, "
            f"not images ({type(err).__name__}: {err})",
            "point it at an Image column or a column of image file paths",
        ) from None
