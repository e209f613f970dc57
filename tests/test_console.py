"""The console of a run: stage lines in order with target i/N and seed, no bar redraws in a log,
third-party noise kept off the console but in the run's log file, "skipped (done)" on a rerun;
and the pieces (progress lines, the console filter, stage names, the plan's counts) one by one."""

from __future__ import annotations

import io
import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
from tqdm import tqdm

from cgmed.cg.config import CGConfig, FewShot
from cgmed.cg.console import plan_counts, stage_label, target
from cgmed.cli.console import HARMLESS_MESSAGES, ConsoleFilter, ConsoleFormatter
from cgmed.progress import LineProgress, progress

TARGETS = ("ct_lung_cancer",)  # the first of the demo's two targets (cg.only)
STAGE = re.compile(r"^\[(\d+)/(\d+) (\w+)\] ([^:]+): (.*)$")


def run_demo(run_dir: Path, cache: Path) -> subprocess.CompletedProcess:
    """The demo experiment made tiny: one target, a 3 x 2 world of 56-pixel images, 3 training
    steps. stdout and stderr are pipes (not a terminal), as under SLURM or CI."""
    args = [
        f"data.cache_dir={cache}",
        "synth.modalities=[CT,MRI,X-ray]",
        "synth.areas=[Lung,Brain]",
        "synth.images_per_subset=40",
        "synth.image_size=56",
        "cg.tiny_base.image_size=56",
        "train.max_steps=3",
        f"cg.only=[{','.join(TARGETS)}]",
        f"hydra.run.dir={run_dir}",
    ]
    res = subprocess.run(
        [sys.executable, "-m", "cgmed.cg", "experiment=demo", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("console")
    first = run_demo(root / "run", root / "cache")
    rerun = run_demo(root / "run", root / "cache")
    return root / "run", first, rerun


def stage_lines(stdout: str) -> list[tuple[str, str, str, str, str]]:
    """(i, N, target, stage, what it says) of every stage line."""
    return [m.groups() for line in stdout.splitlines() if (m := STAGE.match(line))]


def expected_stages(run_dir: Path) -> list[tuple[str, str, str, str, str]]:
    """The protocol's order per target, the numbers read from the run's own files."""

    def accuracy(stage: str) -> str:
        overall = json.loads((run_dir / stage / "results.json").read_text())["overall"]
        return f"accuracy {100 * overall['accuracy']:.1f}% of {overall['n']}"

    def loss(stage: str) -> str:
        rows = (run_dir / stage / "metrics.jsonl").read_text().splitlines()
        return f"loss {json.loads(rows[-1])['loss']:.4f}"

    def count(path: Path) -> int:
        return len(path.read_text().splitlines())

    out = []
    for number, name in enumerate(TARGETS, 1):
        splits = run_dir / name / "splits"
        n_train = count(splits / "related" / "train.jsonl")
        n_test = count(splits / "related" / "test.jsonl")
        n_seen = count(splits / "related" / "seen_test.jsonl")
        n_control = count(splits / "unrelated" / "train.jsonl")
        seed = f"{name}/seed-0"
        steps: list[tuple[str, str]] = [
            ("splits", f"train {n_train} Related, {n_control} Unrelated; test {n_test}; seen {n_seen}"),
            ("Baseline", f"evaluate {n_test} questions (option scoring) ..."),
            ("Baseline", f"evaluated in * ({accuracy(f'{name}/baseline/eval')})"),
            ("Trained seed 0", f"train 3 steps on {n_train} samples ..."),
            ("Trained seed 0", f"trained in * ({loss(f'{seed}/trained')})"),
            ("Trained seed 0", f"evaluate {n_test} questions (option scoring) ..."),
            ("Trained seed 0", f"evaluated in * ({accuracy(f'{seed}/trained/eval')})"),
            ("Trained seed 0 (seen)", f"evaluate {n_seen} questions (option scoring) ..."),
            ("Trained seed 0 (seen)", f"evaluated in * ({accuracy(f'{seed}/trained/eval_seen')})"),
            ("Baseline+ seed 0", f"train 3 steps on {n_control} samples ..."),
            ("Baseline+ seed 0", f"trained in * ({loss(f'{seed}/baseline_plus')})"),
            ("Baseline+ seed 0", f"evaluate {n_test} questions (option scoring) ..."),
            ("Baseline+ seed 0", f"evaluated in * ({accuracy(f'{seed}/baseline_plus/eval')})"),
        ]
        out += [(str(number), str(len(TARGETS)), name, stage, text) for stage, text in steps]
    return out


def without_times(lines: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
    return [(*line[:-1], re.sub(r" in \d+ s ", " in * ", line[-1])) for line in lines]


def test_stage_lines_in_order_with_target_and_seed(demo):
    run_dir, first, _ = demo
    assert without_times(stage_lines(first.stdout)) == expected_stages(run_dir)
    plan = next(line for line in first.stdout.splitlines() if line.startswith("plan: "))
    assert plan.startswith(
        "plan: 1 target x 1 seed: 1 Baseline evaluation, 2 trainings of 3 steps (Trained, Baseline+), "
        "3 evaluations of trained models; log: "
    )
    assert plan.endswith(str(run_dir / "cg.log"))
    # the plan comes before the first stage, the report after the last
    lines = first.stdout.splitlines()
    first_stage = next(i for i, line in enumerate(lines) if STAGE.match(line))
    assert lines.index(plan) < first_stage
    assert "report written to" in lines[-1]


def test_no_bar_redraws_outside_a_terminal(demo):
    _, first, rerun = demo
    for res in (first, rerun):
        assert "\r" not in res.stdout + res.stderr


def test_third_party_noise_off_the_console_and_in_the_log(demo):
    run_dir, first, _ = demo
    console = first.stdout + first.stderr
    log = (run_dir / "cg.log").read_text()
    for bar in ("Loading weights", "Writing model shards"):
        assert bar not in console
    # accelerate's per-file checkpoint messages: in the log only
    assert "accelerate.checkpointing][INFO] - [RANK 0] Model weights saved in" in log
    assert "Model weights saved in" not in console and "accelerate" not in console
    for message in HARMLESS_MESSAGES:
        assert message not in console
    if "DeepSpeed" in log:  # DeepSpeed is imported (by accelerate) where it is installed
        assert f"[DeepSpeed][WARNING] - {HARMLESS_MESSAGES[0]}" in log
    # the stage lines are in the log too
    assert "[cgmed.cg.console][INFO] - [1/1 ct_lung_cancer] Baseline+ seed 0: evaluated in" in log
    # a warning the build repeats (once per split) shows once on the console, twice in the log
    warning = "warning: target 01 has"
    assert sum(line.startswith(warning) for line in first.stdout.splitlines()) == 1
    assert log.count("[WARNING] - target 01 has") == 2


def test_rerun_says_skipped_done(demo):
    run_dir, _, rerun = demo
    expected = []
    for number, name, stage, text in [
        (s[0], s[2], s[3], s[4]) for s in expected_stages(run_dir) if not s[4].endswith("...")
    ]:
        if text.startswith("trained in"):
            text = "training skipped (done)"
        elif text.startswith("evaluated in"):
            text = "evaluation skipped (done): " + text[text.index("(") + 1 : -1]
        expected.append((number, str(len(TARGETS)), name, stage, text))
    assert stage_lines(rerun.stdout) == expected


def test_line_progress_writes_a_line_per_tenth_and_rate_limits(caplog):
    now = [0.0]
    shown = LineProgress(100, "train", unit="step", clock=lambda: now[0], min_interval=10, max_interval=60)
    caplog.set_level(logging.INFO, logger="cgmed.progress")
    for _ in range(100):
        now[0] += 1.0  # 1 step/s: a tenth every 10 s
        shown.set_postfix(loss="0.5000", refresh=False)
        shown.update(1)
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split(" step ")[0] for line in lines] == [f"train {n}/100" for n in range(10, 100, 10)]
    assert lines[0] == f"train 10/100 step (10%), loss 0.5000, 1.0 step/s, {tqdm.format_interval(90)} left"

    # fast: no more than one line per min_interval; slow: one at least every max_interval
    caplog.clear()
    fast = LineProgress(1000, "eval", clock=lambda: now[0], min_interval=10, max_interval=60)
    for _ in range(1000):
        now[0] += 0.001
        fast.update(1)
    assert caplog.records == []
    slow = LineProgress(1000, "eval", clock=lambda: now[0], min_interval=10, max_interval=60)
    now[0] += 61
    slow.update(1)
    assert [r.getMessage().split(",")[0] for r in caplog.records] == ["eval 1/1000 it (0%)"]


def test_progress_mode(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    for name in ("SLURM_JOB_ID", "CI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(sys, "stderr", Terminal())
    assert progress(10, "train", False) is None
    bar = progress(10, "train", "auto")
    assert isinstance(bar, tqdm)
    bar.close()
    monkeypatch.setenv("SLURM_JOB_ID", "123")
    assert isinstance(progress(10, "train", "auto"), LineProgress)
    bar = progress(10, "train", True)  # asked for: drawn anyway
    assert isinstance(bar, tqdm)
    bar.close()
    monkeypatch.delenv("SLURM_JOB_ID")
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a pipe or a file
    assert isinstance(progress(10, "train", "auto"), LineProgress)


def record(name: str, level: int, message: str) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, message, None, None)


def test_console_filter_and_format():
    keep, fmt = ConsoleFilter(), ConsoleFormatter()
    shown = [
        fmt.format(r)
        for r in (
            record("cgmed.cg.console", logging.INFO, "[1/2 t] Baseline: evaluate 8 questions ..."),
            record("accelerate.checkpointing", logging.INFO, "Model weights saved in x"),
            record("DeepSpeed", logging.WARNING, HARMLESS_MESSAGES[0]),
            record("transformers.modeling_utils", logging.WARNING, "some weights were not used"),
            record("cgmed.data.build", logging.WARNING, "target 01 has 8 test questions"),
            record("cgmed.data.build", logging.WARNING, "target 01 has 8 test questions"),
            record("cgmed.train.run", logging.ERROR, "stopped"),
        )
        if keep.filter(r)
    ]
    assert shown == [
        "[1/2 t] Baseline: evaluate 8 questions ...",
        "warning (transformers.modeling_utils): some weights were not used",
        "warning: target 01 has 8 test questions",
        "error: stopped",
    ]


@pytest.mark.parametrize(
    "folder, label",
    [
        ("baseline/eval", "Baseline"),
        ("baseline/eval_generation", "Baseline (generation)"),
        ("baseline/eval_2shot/repeat-1", "Baseline (2-shot, draw 1)"),
        ("seed-3/trained", "Trained seed 3"),
        ("seed-3/trained/eval", "Trained seed 3"),
        ("seed-3/trained/eval_seen", "Trained seed 3 (seen)"),
        ("seed-0/baseline_plus", "Baseline+ seed 0"),
        ("seed-0/baseline_plus/eval_generation", "Baseline+ seed 0 (generation)"),
    ],
)
def test_stage_names(tmp_path, folder, label):
    with target(1, 2, "t", tmp_path / "t"):
        assert stage_label(tmp_path / "t" / folder) == label
    # the pilot's layout, outside a target
    assert stage_label(tmp_path / "pilot" / "seed-1" / "single-03") == "single-03 seed 1"


def test_plan_counts_follow_the_protocol():
    cg = CGConfig(seeds=[0, 1, 2])
    assert plan_counts(cg, [True, False]) == {
        "targets": 2,
        "seeds": 3,
        "baseline_evaluations": 2,
        "trainings": 12,  # Trained and Baseline+ per target and seed
        "trained_evaluations": 2 * 3 * 2 + 3,  # each model on its target, Trained on seen (one target)
    }
    extras = CGConfig(
        seeds=[0], baseline_plus=False, second_method="generation", few_shot=FewShot(shots=[1, 2])
    )
    counts = plan_counts(extras, [False])
    assert counts["baseline_evaluations"] == 1 + 1 + 2 * extras.few_shot.repeats
    assert counts["trainings"] == 1
    assert counts["trained_evaluations"] == 1 + 1 + 2 * extras.few_shot.repeats


def test_evaluation_progress_counts_every_question_asked(demo, monkeypatch, tmp_path):
    """The evaluation's progress goes from 0 to the number of questions asked (each rotation under
    circular evaluation), batch by batch."""
    import cgmed.eval.run as eval_run
    from cgmed.eval.score import EvalConfig

    run_dir, _, _ = demo
    reporters = []

    class Recorder:
        def __init__(self, total, desc, mode, unit="it", initial=0):
            self.total, self.mode, self.steps, self.closed = total, mode, [], False
            reporters.append(self)

        def update(self, n=1):
            self.steps.append(n)

        def close(self):
            self.closed = True

    monkeypatch.setattr(eval_run, "progress_reporter", Recorder)
    manifest = run_dir / TARGETS[0] / "splits" / "related" / "test.jsonl"
    records = [json.loads(line) for line in manifest.read_text().splitlines()]
    model = run_dir / TARGETS[0] / "seed-0" / "trained" / "final"
    cfg = EvalConfig(batch_size=4, bootstrap=0, circular=True)
    eval_run.evaluate(str(model), cfg, str(manifest), tmp_path / "eval", progress=True)
    (shown,) = reporters
    assert shown.mode is True and shown.closed
    assert shown.total == sum(len(r["options"]) for r in records) == sum(shown.steps)
    assert max(shown.steps) == 4
