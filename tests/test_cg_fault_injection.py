"""Fault injection: ``cgmed-cg`` killed (SIGKILL) at some point of a tiny two-target run, then
rerun, ends with the same report numbers as a run that was never interrupted.

Kill points are found from outside, by watching the run directory: while ``final/`` is written
(its temporary ``.tmp-final`` exists), while a ``results.json`` is written (its ``.tmp-results.json.*``),
or after a number of seconds. The default suite kills during a ``final/`` write; ``-m slow`` adds
the other points.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ARMS = ("baseline", "baseline_plus", "trained")
TINY = [
    "experiment=demo",  # two targets, each with Baseline, Baseline+ and Trained
    "synth.modalities=[CT,MRI,X-ray]",
    "synth.areas=[Lung,Brain]",
    "synth.images_per_subset=20",
    "synth.image_size=56",
    "synth.test_fraction=0.2",
    "cg.tiny_base.image_size=56",
    "cg.tiny_base.text_layers=2",
    "cg.tiny_base.vision_layers=1",
    "cg.eval_seen=false",
    "cg.plots=false",
    "split.cap_per_subset=8",
    "train.max_steps=4",
    "train.save_every=2",  # a kill during training resumes from a checkpoint
    "train.per_device_batch_size=4",
    "eval.bootstrap=20",
]


def command(run_dir: Path, cache: Path) -> list[str]:
    return [sys.executable, "-m", "cgmed.cg", *TINY, f"data.cache_dir={cache}", f"hydra.run.dir={run_dir}"]


def environment() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def run_to_end(run_dir: Path, cache: Path) -> dict:
    done = subprocess.run(
        command(run_dir, cache), capture_output=True, text=True, timeout=300, env=environment()
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((run_dir / "cg_report.json").read_text())


def numbers(report: dict) -> dict:
    """Per target and arm: the accuracy and each seed's value."""
    return {
        row["name"]: {arm: (row[arm]["accuracy"], row[arm].get("per_seed")) for arm in ARMS}
        for row in report["targets"]
    }


def kill_when(run_dir: Path, cache: Path, pattern: str | None, after_s: float) -> bool:
    """Start the run and SIGKILL it when a path matching ``pattern`` appears under ``run_dir`` (or,
    without a pattern, ``after_s`` seconds in); returns whether it was killed before it finished."""
    proc = subprocess.Popen(
        command(run_dir, cache), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=environment()
    )
    start = time.monotonic()
    try:
        while proc.poll() is None:
            due = time.monotonic() - start >= after_s
            if (pattern is None and due) or (pattern and run_dir.is_dir() and any(run_dir.rglob(pattern))):
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return True
            time.sleep(0.005)
        return False
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    root = tmp_path_factory.mktemp("fault")
    cache = root / "cache"
    return cache, numbers(run_to_end(root / "reference", cache))


def check_kill_and_rerun(uninterrupted, tmp_path: Path, pattern: str | None, after_s: float = 0.0) -> None:
    cache, expected = uninterrupted
    run_dir = tmp_path / "run"
    assert kill_when(run_dir, cache, pattern, after_s), "the run finished before the kill point"
    assert not (run_dir / "cg_report.json").exists()
    assert numbers(run_to_end(run_dir, cache)) == expected


def test_killed_while_final_is_written_reruns_to_the_same_report(uninterrupted, tmp_path):
    check_kill_and_rerun(uninterrupted, tmp_path, ".tmp-final")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("pattern", "after_s"),
    [
        (".tmp-results.json.*", 0.0),
        ("step-000002", 0.0),  # right after the first checkpoint of the first training
        (None, 4.0),
        (None, 9.0),
        (None, 14.0),
    ],
)
def test_killed_anywhere_reruns_to_the_same_report(uninterrupted, tmp_path, pattern, after_s):
    check_kill_and_rerun(uninterrupted, tmp_path, pattern, after_s)
