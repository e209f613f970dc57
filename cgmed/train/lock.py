"""One run per directory at a time: the lock file ``cgmed.lock`` in a run directory.

:func:`acquire_run_lock` holds an exclusive ``flock`` on ``<run dir>/cgmed.lock`` for as long as
the run lasts and writes the holder (pid, host, command, start time) into it, so that a second
process refuses with who holds the directory. The operating system drops a flock when its
process dies: a lock file left by a killed run on this host is taken over, with a note naming
the dead process. One left by a process on another host is refused (that process cannot be
checked from here); the message says which file to delete once it is known to be gone.

A process may take a lock it already holds (``cgmed-cg`` can lock a directory it then trains
in); the file goes when the last holder releases it. Multi-process launches share one lock:
:func:`acquire_on_main` takes it on the main process and stops every rank when it cannot.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cgmed.errors import CgmedError

LOCK_NAME = "cgmed.lock"
log = logging.getLogger(__name__)


class RunDirectoryInUse(CgmedError):
    """Another process holds the run directory's lock."""


@dataclass
class RunLock:
    """A held lock; :meth:`release` it (or use it as a context manager)."""

    path: Path
    fd: int
    holders: int = 1
    took_over: dict[str, Any] | None = field(default=None)  # the stale holder it replaced

    def release(self) -> None:
        """Give the lock up; the file is removed when this process's last holder releases it."""
        self.holders -= 1
        if self.holders > 0:
            return
        _HELD.pop(self.path, None)
        # removed while still locked, so a waiting process never takes a file that is going away
        self.path.unlink(missing_ok=True)
        os.close(self.fd)

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


_HELD: dict[Path, RunLock] = {}


def acquire_run_lock(run_dir: Path, purpose: str) -> RunLock:
    """Lock ``run_dir`` for this process (``purpose``, e.g. ``cgmed-train``, is shown to others).

    Raises :class:`RunDirectoryInUse` naming the holder when another process has it.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir.resolve() / LOCK_NAME
    held = _HELD.get(path)
    if held is not None:
        held.holders += 1
        return held
    fd = _lock_current_file(path)
    try:
        previous = _read_holder(fd)
        if previous:
            _check_stale(path, previous)
        _write_holder(fd, purpose)
    except BaseException:
        os.close(fd)
        raise
    lock = RunLock(path, fd, took_over=previous or None)
    _HELD[path] = lock
    return lock


def acquire_on_main(run_dir: Path, purpose: str, state: Any) -> RunLock | None:
    """Lock ``run_dir`` once for a multi-process launch: the main process takes it, every rank
    learns whether it could, and all stop with the holder's name when it could not.

    ``state`` is accelerate's ``PartialState`` or ``Accelerator``. Returns the lock on the main
    process, None on the others.
    """
    lock, error = None, None
    if state.is_main_process:
        try:
            lock = acquire_run_lock(run_dir, purpose)
        except Exception as err:  # the other ranks wait for word of it
            error = err
    problem = None if error is None else str(error)
    if state.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        shared = [problem]
        broadcast_object_list(shared, from_process=0)
        problem = shared[0]
    if error is not None:
        raise error
    if problem is not None:
        raise RunDirectoryInUse(f"the main process could not lock the run directory: {problem}")
    return lock


def _lock_current_file(path: Path) -> int:
    """An open descriptor of ``path`` holding its exclusive flock."""
    for _ in range(10):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunDirectoryInUse(_in_use(path, holder)) from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        # the holder released (and removed) the file between open and flock: lock the new one
        os.close(fd)
    raise RunDirectoryInUse(f"{path} keeps changing; another process is taking and releasing it")


def _check_stale(path: Path, previous: dict[str, Any]) -> None:
    """A lock file nobody holds: take it over when its writer is gone from this host, else refuse."""
    host, pid = previous.get("host"), previous.get("pid")
    if host != socket.gethostname():
        raise RunDirectoryInUse(
            f"{path.parent} was locked by pid {pid} on host {host} ({_describe(previous)}), which "
            f"cannot be checked from {socket.gethostname()}; once no process of that run is left "
            f"on {host}, delete {path}"
        )
    state = "no longer running" if not _alive(pid) else "running, but no longer holding it"
    log.warning("took over the lock %s left by pid %s (%s), %s", path, pid, _describe(previous), state)


def _in_use(path: Path, holder: dict[str, Any]) -> str:
    if not holder:
        return f"{path.parent} is in use by another process (it is writing {path.name} right now)"
    return (
        f"{path.parent} is in use by pid {holder.get('pid')} on host {holder.get('host')} "
        f"({_describe(holder)}); wait for it to finish or use another run directory"
    )


def _describe(holder: dict[str, Any]) -> str:
    started = holder.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if started else "unknown time"
    return f"{holder.get('purpose', 'cgmed')}, started {when}"


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        raw = os.pread(fd, 65536, 0)
        doc = json.loads(raw.decode("utf-8")) if raw.strip() else {}
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _write_holder(fd: int, purpose: str) -> None:
    doc = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "purpose": purpose,
        "started": time.time(),
        "command": " ".join(sys.argv),
    }
    data = (json.dumps(doc) + "\n").encode("utf-8")
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    os.fsync(fd)


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
