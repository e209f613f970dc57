"""JSON-lines files of the pipeline (manifests, predictions, metrics): one reader, one writer.

Every ``*.jsonl`` that cgmed writes and reads back goes through here, so a malformed line is
always reported the same way: the file and line number, and what to do about it. Files that a
later stage reads back are written atomically (``write_jsonl(..., atomic=True)``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from cgmed.atomic import atomic_file
from cgmed.errors import DataError


def iter_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """The records of a JSON-lines file, streamed; blank lines are skipped.

    A line that is not a JSON object raises DataError naming ``file:line``.
    """
    for _, record in iter_jsonl_numbered(path):
        yield record


def iter_jsonl_numbered(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, record)`` of a JSON-lines file (see :func:`iter_jsonl`), for readers whose
    own checks of a record name ``file:line`` too."""
    p = Path(path)
    with open(p, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(
                    f"{p}:{number}", f"malformed JSON line: {err.msg}", "rewrite or delete the file"
                ) from None
            if not isinstance(record, dict):
                raise DataError(f"{p}:{number}", "a line is not a JSON object", "rewrite or delete the file")
            yield number, record


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """All records of a JSON-lines file (see :func:`iter_jsonl`)."""
    return list(iter_jsonl(path))


def write_jsonl(path: str | Path, records: Iterable[Mapping[str, Any]], *, atomic: bool = False) -> int:
    """Write ``records`` one per line (UTF-8, keys in their order); returns how many.

    ``atomic``: write through a temporary file renamed over ``path`` at the end
    (:func:`cgmed.atomic.atomic_file`), for files a later stage reads back: an error while
    writing, in ``records`` too, leaves the old file as it was, and a full disk is named.
    """
    n = 0
    with atomic_file(path) if atomic else open(path, "w", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
            n += 1
    return n
