"""Atomic file writes: a file that a later stage reads back is there whole or not at all.

A file is written to ``.tmp-<name>.<pid>`` beside its target, flushed to disk, and renamed over
the target (a rename within one directory is atomic), so a killed or failing writer leaves the
old file, or none, never a torn one. Whatever goes wrong, the temporary file is removed; a full
disk (``ENOSPC``) becomes a :class:`~cgmed.errors.DataError` naming the file and the free space.
Leftovers of a killed process carry the ``.tmp-`` prefix, so a run directory's clean-up at start
finds them.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from cgmed.errors import DataError

TEMP_PREFIX = ".tmp-"


def temporary_name(path: Path) -> Path:
    """Where ``path`` is written before the rename: beside it, unique to this process."""
    return path.with_name(f"{TEMP_PREFIX}{path.name}.{os.getpid()}")


@contextmanager
def atomic_file(path: str | os.PathLike[str], mode: str = "w", durable: bool = True) -> Iterator[IO[Any]]:
    """Open ``path`` for writing (``"w"`` text in UTF-8, or ``"wb"``); it appears only when the
    ``with`` block ends without an error, in one rename. On any error the temporary file is
    removed and the target is left as it was; ``ENOSPC`` is raised as a DataError naming the file.
    ``durable=False`` skips the fsync: still whole or absent for any reader while the machine
    runs, for files that can be made again after a power loss (caches) at a fraction of the cost.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_file writes with mode 'w' or 'wb', not {mode!r}")
    target = Path(path)
    tmp = temporary_name(target)
    try:
        # open() rather than mkstemp: the file gets the permissions a plain write would give
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as fh:
            yield fh
            fh.flush()
            if durable:
                os.fsync(fh.fileno())  # the bytes are on disk before the name points at them
        os.replace(tmp, target)
    except BaseException as err:
        written = tmp.stat().st_size if tmp.exists() else 0
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            raise disk_full_error(target, written) from err
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (:func:`atomic_file`)."""
    with atomic_file(path, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (:func:`atomic_file`)."""
    with atomic_file(path, "w") as fh:
        fh.write(text)


def disk_full_error(path: Path, written: int) -> DataError:
    """The message for a disk that filled up while ``path`` was written."""
    free = shutil.disk_usage(path.parent).free
    so_far = f", {_bytes(written)} of it written before the disk filled" if written else ""
    return DataError(
        str(path),
        f"disk full while writing this file ({_bytes(free)} free on its disk{so_far}). The partial file "
        "was removed; an earlier version of the file, if any, is untouched",
        f"free space on the disk holding {path.parent} and rerun",
    )


def _bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"
