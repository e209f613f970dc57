"""One run per directory at a time: the lock file, between real processes on one directory."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cgmed.train.lock import LOCK_NAME, RunDirectoryInUse, acquire_run_lock

# Takes the lock of argv[1] and keeps it until killed.
HOLD = """
import sys, time
from pathlib import Path
from cgmed.train.lock import acquire_run_lock
lock = acquire_run_lock(Path(sys.argv[1]), "cgmed-train")
print("locked", flush=True)
time.sleep(600)
"""
# Takes the lock of argv[1], says so, and releases it.
TAKE = """
import logging, sys
from pathlib import Path
from cgmed.train.lock import acquire_run_lock
logging.basicConfig(level=logging.WARNING, format="%(message)s")
with acquire_run_lock(Path(sys.argv[1]), "second") as lock:
    print("acquired", flush=True)
"""


def take(run_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", TAKE, str(run_dir)], capture_output=True, text=True, timeout=120
    )


def test_a_second_process_refuses_and_a_dead_holders_lock_is_taken_over(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        second = take(tmp_path)
        assert second.returncode != 0 and "acquired" not in second.stdout
        said = second.stderr
        assert "RunDirectoryInUse" in said
        assert f"{tmp_path} is in use by pid {holder.pid} on host {socket.gethostname()} (cgmed-train" in said
        assert "wait for it to finish or use another run directory" in said
    finally:
        holder.kill()
        holder.wait()
    # the holder died without cleaning up: its file is still there, naming it
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == holder.pid
    third = take(tmp_path)
    assert third.returncode == 0 and "acquired" in third.stdout, third.stderr
    assert f"took over the lock {tmp_path / LOCK_NAME} left by pid {holder.pid}" in third.stderr
    assert "no longer running" in third.stderr
    assert not (tmp_path / LOCK_NAME).exists()  # released at the end


def test_a_lock_written_on_another_host_is_refused(tmp_path):
    stale = {"pid": 12345, "host": "other-node", "purpose": "cgmed-train", "started": 0}
    (tmp_path / LOCK_NAME).write_text(json.dumps(stale))
    with pytest.raises(
        RunDirectoryInUse, match=r"locked by pid 12345 on host other-node.*cannot be checked"
    ) as err:
        acquire_run_lock(tmp_path, "cgmed-train")
    assert f"delete {tmp_path.resolve() / LOCK_NAME}" in str(err.value)
    assert (tmp_path / LOCK_NAME).exists()  # left for its owner


def test_a_stale_lock_of_this_host_is_taken_over_with_a_note(tmp_path, caplog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = {"pid": dead.pid, "host": socket.gethostname(), "purpose": "cgmed-cg", "started": 0}
    (tmp_path / LOCK_NAME).write_text(json.dumps(stale))
    with caplog.at_level(logging.WARNING, logger="cgmed.train.lock"):
        lock = acquire_run_lock(tmp_path, "cgmed-train")
    assert lock.took_over["pid"] == dead.pid
    assert f"left by pid {dead.pid} (cgmed-cg" in caplog.text
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / LOCK_NAME).exists()


def test_the_holding_process_may_take_its_lock_again(tmp_path):
    outer = acquire_run_lock(tmp_path, "cgmed-cg")
    inner = acquire_run_lock(tmp_path, "cgmed-train")  # cgmed-cg training in a directory it holds
    assert inner is outer
    inner.release()
    assert (tmp_path / LOCK_NAME).exists()  # the outer holder still has it
    second = take(tmp_path)
    assert second.returncode != 0 and f"in use by pid {os.getpid()}" in second.stderr
    outer.release()
    assert not (tmp_path / LOCK_NAME).exists()
    assert take(tmp_path).returncode == 0
