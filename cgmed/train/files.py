"""Files of a run that must never be seen half-written: atomic writes, completion markers, disk full.

A file is written under a ``.tmp-`` name beside its target and renamed over it when complete
(:func:`cgmed.atomic.atomic_write_text`; a rename within one directory is atomic), so a killed process leaves the old file or the new one,
never a torn one. A directory that is written as a whole (``final/``) carries a completion marker,
``cgmed_complete.json``, written last: it lists every file with its size, so later stages can
tell a complete directory from a partial one, and see a file truncated since. Whatever a killed
run leaves under a ``.tmp-`` name is removed when the next run in that directory starts.
"""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path
from typing import Any

from cgmed.atomic import TEMP_PREFIX, atomic_write_text
from cgmed.errors import CgmedError

COMPLETE_MARKER = "cgmed_complete.json"


class DiskFullError(CgmedError):
    """The disk filled up while a run was saving; the partial files are removed."""


def remove_temporaries(directory: Path) -> list[Path]:
    """Remove the ``.tmp-*`` files and directories directly in ``directory``; returns what was removed."""
    if not directory.is_dir():
        return []
    removed = []
    for leftover in sorted(directory.glob(TEMP_PREFIX + "*")):
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
        removed.append(leftover)
    return removed


def file_sizes(directory: Path) -> dict[str, int]:
    """Every file under ``directory`` (relative POSIX path -> bytes), the completion marker left out."""
    return {
        p.relative_to(directory).as_posix(): p.stat().st_size
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != COMPLETE_MARKER
    }


def size_problems(directory: Path, expected: dict[str, int]) -> list[str]:
    """What differs from ``expected`` (relative path -> bytes): missing and truncated files."""
    problems = []
    for name, size in expected.items():
        path = directory / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif path.stat().st_size != size:
            problems.append(f"{name} has {path.stat().st_size} bytes, {size} were written")
    return problems


def write_complete_marker(directory: Path, info: dict[str, Any]) -> None:
    """Mark ``directory`` complete: ``info`` plus the size of every file now in it."""
    doc = {**info, "files": file_sizes(directory)}
    atomic_write_text(directory / COMPLETE_MARKER, json.dumps(doc, indent=1) + "\n")


def marker_problems(directory: Path) -> list[str]:
    """Why ``directory`` is not complete (no marker, unreadable marker, files missing or truncated)."""
    marker = directory / COMPLETE_MARKER
    if not marker.is_file():
        return [f"{directory} has no {COMPLETE_MARKER} (it was not written to the end)"]
    try:
        files = json.loads(marker.read_text(encoding="utf-8"))["files"]
    except (ValueError, KeyError, TypeError) as err:
        return [f"{marker} is unreadable ({err})"]
    return size_problems(directory, files)


def directory_bytes(directory: Path) -> int:
    """Bytes of every file under ``directory`` (0 when it does not exist)."""
    return sum(file_sizes(directory).values()) if directory.is_dir() else 0


def human_bytes(n: float) -> str:
    """``n`` bytes in the largest unit that keeps a number >= 1 (``1.5 GB``)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def is_disk_full(err: BaseException, directory: Path, needed: int) -> bool:
    """Whether ``err``, raised while writing into ``directory``, means the disk is full.

    ``OSError(ENOSPC)`` says so; torch's writer reports only "file write failed" and safetensors
    "No space left on device" in its text, so a write error with less free space than ``needed``
    counts as well.
    """
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return True
    if "No space left on device" in str(err):
        return True
    free = shutil.disk_usage(_existing(directory)).free
    return isinstance(err, (OSError, RuntimeError)) and free < needed


def disk_full_error(directory: Path, what: str, needed: int) -> DiskFullError:
    """The message for a full disk: where, how much is free, roughly how much is needed."""
    free = shutil.disk_usage(_existing(directory)).free
    return DiskFullError(
        f"disk full while writing {what} into {directory}: {human_bytes(free)} free, about "
        f"{human_bytes(needed)} needed. The partial files were removed and the last complete "
        "checkpoint is kept; free space on that disk and rerun with train.resume=auto"
    )


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path
