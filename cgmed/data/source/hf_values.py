"""The values of a Hugging Face dataset's rows: labels, MAT elements from columns, and image bytes.

- A label is a ClassLabel's name, a string, or a number written as text; a list of them (a
  ``List(ClassLabel)`` or a list of strings) is a multi-label set, written as Med-MAT's multi-label
  subsets write theirs (:func:`cgmed.data.choices.canonical_label`: the names sorted and
  comma-joined); an empty list is ``Normal``, Med-MAT's label of an image without findings.
- A MAT element read from a column goes through the vocabulary (``data.extra_elements`` adds names).
- An image is the row's stored bytes, or the file its path names; the bytes are written once to a
  content-addressed cache (``<cache>/<2 hex>/<blake2b>.<ext>``) that manifests point at, so training,
  evaluation and the leakage audit read plain files and the same bytes always have one digest.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cgmed.data.choices import canonical_label
from cgmed.data.source.bad import BadSample
from cgmed.data.vocab import Vocabulary

ValueReader = Callable[[Any], str]  # a column's value -> its text; BadSample when it has none
NO_FINDING = "Normal"  # the label of an empty label set

_MAGIC = (
    (0, b"\x89PNG\r\n\x1a\n", ".png"),
    (0, b"\xff\xd8\xff", ".jpg"),
    (0, b"GIF8", ".gif"),
    (0, b"BM", ".bmp"),
    (0, b"II*\x00", ".tif"),
    (0, b"MM\x00*", ".tif"),
    (8, b"WEBP", ".webp"),
    (128, b"DICM", ".dcm"),
)


def label_reader(feature: Any, column: str, key: str) -> ValueReader:
    """A function from a label column's value to the label text (BadSample when it has none).

    ``feature`` is the column's ``datasets`` feature; ``key`` the config key naming the column.
    """
    # features are told apart by class name: importing datasets here would load it with every reader
    inner = getattr(feature, "feature", None)
    if inner is not None and type(feature).__name__ in ("List", "LargeList", "Sequence"):
        one = _scalar_reader(inner, column, key)

        def label_set(value: Any) -> str:
            if not isinstance(value, list):
                raise BadSample("malformed record", f"column {column!r} ({key}) holds {value!r}, not a list")
            return canonical_label(", ".join(one(item) for item in value)) or NO_FINDING

        return label_set
    return _scalar_reader(feature, column, key)


def _scalar_reader(feature: Any, column: str, key: str) -> ValueReader:
    """One label value -> text: a ClassLabel's name, a string, or a number."""
    names = list(getattr(feature, "names", None) or [])
    if type(feature).__name__ == "ClassLabel":

        def class_name(value: Any) -> str:
            if isinstance(value, int) and 0 <= value < len(names):
                return names[value]
            shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
            raise BadSample(
                "label outside the ClassLabel",
                f"label {value!r} of column {column!r} is not a class of its ClassLabel "
                f"({len(names)} names: {shown}); fix the row, or point {key} at another column",
            )

        return class_name

    def text(value: Any) -> str:
        if isinstance(value, (list, dict)) or value is None or not str(value).strip():
            raise BadSample("missing label", f"column {column!r} ({key}) holds {value!r}, not a label")
        return str(value).strip()

    return text


def element_reader(feature: Any, kind: str, column: str, key: str, vocab: Vocabulary) -> ValueReader:
    """A column value -> the canonical MAT element of ``kind`` (BadSample when the vocabulary lacks it)."""
    text = _scalar_reader(feature, column, key)
    known: dict[Any, str] = {}

    def element(value: Any) -> str:
        name = known.get(value)
        if name is None:
            written = text(value)
            found = vocab.find(kind, written)
            if found is None:
                raise BadSample(
                    "unknown MAT element",
                    f"{kind} {written!r} in column {column!r} ({key}) is not in the vocabulary; "
                    f"add it with data.extra_elements.{kind}=[...]",
                )
            name = known[value] = found
        return name

    return element


def image_bytes(image: Any, base_dir: Path | None, image_column: str) -> tuple[bytes, str]:
    """The bytes of a row's undecoded image (``{"bytes", "path"}``) and the file suffix to keep.

    A row without bytes is read from its path (relative paths from ``base_dir``, the dataset's folder).
    """
    stored = image if isinstance(image, dict) else {}
    data, path = stored.get("bytes"), stored.get("path")
    if data:
        return bytes(data), suffix_of(path, data)
    if not path:
        raise BadSample("missing image", f"column {image_column!r} is empty in this row")
    file = Path(path) if base_dir is None or os.path.isabs(path) else base_dir / path
    try:
        data = file.read_bytes()
    except OSError as err:
        raise BadSample("missing image", f"image file {file} cannot be read: {err.strerror}") from None
    return data, suffix_of(path, data)


def suffix_of(path: str | None, data: bytes) -> str:
    """The file suffix the cached copy keeps: the stored name's (``.nii.gz`` whole), else the
    format's by its signature, else none (readers then tell the format by the content)."""
    if path:
        name = Path(path).name.lower()
        if name.endswith(".nii.gz"):
            return ".nii.gz"
        if Path(name).suffix:
            return Path(name).suffix
    for offset, magic, suffix in _MAGIC:
        if data[offset : offset + len(magic)] == magic:
            return suffix
    return ""


def cache_image(data: bytes, suffix: str, cache: Path) -> Path:
    """The cached copy of ``data``: ``cache/<2 hex>/<blake2b digest><suffix>``, written once (atomically)."""
    digest = hashlib.blake2b(data, digest_size=16).hexdigest()
    target = cache / digest[:2] / f"{digest}{suffix}"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
        partial.write_bytes(data)
        os.replace(partial, target)
    return target
