"""The trainer comparisons in benchmarks/ run end to end in their smoke modes, so they cannot rot.

``gpu_train.py --smoke`` needs nothing beyond cgmed's own install (its TRL arm is skipped with a
note without TRL); ``vs_trl.py`` needs the ``bench`` extra and is skipped without it.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
HAS_TRL = importlib.util.find_spec("trl") is not None


def run_benchmark(script: str, *args: str) -> str:
    """The script's stdout; fails with the end of its stderr when it exits with an error."""
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


def test_gpu_train_smoke_runs_every_arm_on_cpu(tmp_path):
    out = run_benchmark("gpu_train.py", "--smoke", "--peak-tflops", "1", "--workdir", str(tmp_path))
    arms = ["cgmed", "bare"] + (["trl"] if HAS_TRL else [])
    for arm in arms:
        # image size, arm, batch, s/step, samples/s, tokens/s, MFU (a figure: a peak was given)
        assert re.search(rf"^\s+56 {arm}\s+2\s+[\d.]+\s+[\d.]+\s+[\d,]+\s+[\d.]+%", out, re.M), out
    if not HAS_TRL:
        assert "TRL arm skipped" in out
    assert "56 px, largest batch that fit: cgmed 2" in out
    assert "cgmed / bare time per step: b2 " in out


@pytest.mark.skipif(not HAS_TRL, reason="TRL is the bench extra: pip install -e '.[bench]'")
def test_vs_trl_smoke_alternates_and_reports_ratio_memory_and_accuracy(tmp_path):
    out = run_benchmark("vs_trl.py", "--smoke", "--workdir", str(tmp_path))
    runs = re.findall(r"^\d+\s+(cgmed|trl)\s", out, re.M)
    assert runs == ["cgmed", "trl"], out
    assert re.search(r"cgmed / TRL time per step: [\d.]+", out), out
    assert re.search(r"peak RSS: cgmed \d+ MiB, TRL \d+ MiB", out), out
    # the same samples in the first step, the same loss: the arms train on the same batches
    first = re.search(r"first-step loss cgmed ([\d.]+), TRL ([\d.]+)", out)
    assert first and float(first.group(1)) == pytest.approx(float(first.group(2)), rel=1e-3), out


def test_study_cache_smoke_runs_both_arms_with_identical_reports(tmp_path):
    out = run_benchmark("study_cache.py", "--smoke", "--workdir", str(tmp_path))
    rows = {
        m.group(1): (int(m.group(2)), int(m.group(3)), int(m.group(4)))
        for m in re.finditer(
            r"^(plain|cache\+reuse)\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+(\d+)\s+(\d+)\s+(\d+)", out, re.M
        )
    }
    assert rows["plain"] == (2, 0, 0), out  # two trainings, the cache off
    trainings, hits, misses = rows["cache+reuse"]
    assert trainings == 1 and hits > 0 and misses > 0, out  # one shared training, the cache read
    assert "reports identical across arms: yes" in out
