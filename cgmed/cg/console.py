"""The lines ``cgmed-cg`` writes as it goes: the plan at the start, then one line as each stage
starts and one as it ends, so that whoever watches (a terminal, a SLURM log) knows where the run is.

    plan: 2 targets x 1 seed: 2 Baseline evaluations, 4 trainings of 400 steps (Trained,
      Baseline+), 6 evaluations of trained models; log: outputs/demo/cg.log
    [1/2 ct_lung_cancer] splits: train 320 Related, 320 Unrelated; test 40; seen 80
    [1/2 ct_lung_cancer] Trained seed 0: train 400 steps on 320 samples ...
    [1/2 ct_lung_cancer] Trained seed 0: trained in 41 s (loss 0.2100)
    [1/2 ct_lung_cancer] Trained seed 0: evaluate 40 questions (option scoring) ...
    [1/2 ct_lung_cancer] Trained seed 0: evaluated in 2 s (accuracy 62.5% of 40)

and on a rerun ``Trained seed 0: training skipped (done)``, ``Trained seed 0: evaluation skipped
(done): accuracy 62.5% of 40``.

The lines go to the ``cgmed.cg.console`` logger (the console and the run's log file, see
:mod:`cgmed.cli.console`), from the main process only. A stage is named from its folder in the
protocol's layout (``<target>/seed-0/baseline_plus/eval`` -> ``Baseline+ seed 0``), and the
target (number i of N) from :func:`target`, which the protocol enters around each target.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "StageLine",
    "announce_plan",
    "evaluation_headline",
    "evaluation_line",
    "loss_headline",
    "plan_counts",
    "report_splits",
    "stage_label",
    "target",
    "training_line",
]

log = logging.getLogger(__name__)

# the protocol's stage folders -> how the report names the arm
ARMS = {"baseline": "Baseline", "trained": "Trained", "baseline_plus": "Baseline+"}


@dataclass(frozen=True)
class _Target:
    number: int
    total: int
    name: str
    directory: Path


_current: ContextVar[_Target | None] = ContextVar("cgmed_cg_target", default=None)


@contextlib.contextmanager
def target(number: int, total: int, name: str, directory: Path) -> Iterator[None]:
    """Stage lines within carry ``[number/total name]``; ``directory`` is the target's folder."""
    token = _current.set(_Target(number, total, name, directory))
    try:
        yield
    finally:
        _current.reset(token)


def _is_main() -> bool:
    from accelerate import PartialState

    return PartialState().is_main_process


def _prefix() -> str:
    here = _current.get()
    return "" if here is None else f"[{here.number}/{here.total} {here.name}] "


def stage_label(out: Path) -> str:
    """``Trained seed 0``, ``Baseline (2-shot, draw 1)``, ``Trained seed 0 (seen)`` ...: the stage
    in the folder ``out`` (relative to the current target's folder; the last three parts of the
    path outside a target, as in the pilot)."""
    here = _current.get()
    parts = out.parts[-3:]
    if here is not None and out.is_relative_to(here.directory):
        parts = out.relative_to(here.directory).parts
    arm = other = seed = None
    details: list[str] = []
    for part in parts:
        shots = re.fullmatch(r"eval_(\d+)shot", part)
        if part.startswith("seed-"):
            seed = part.removeprefix("seed-")
        elif part in ARMS:
            arm = ARMS[part]
        elif shots:
            details.append(f"{shots[1]}-shot")
        elif part.startswith("repeat-"):
            details.append(f"draw {part.removeprefix('repeat-')}")
        elif part.startswith("eval_"):  # eval_seen, a second method's eval_generation, eval_ood ...
            details.append(part.removeprefix("eval_"))
        elif part != "eval":
            other = part  # a pilot model (multi, single-03)
    label = arm or other or out.name
    if seed is not None:
        label += f" seed {seed}"
    return f"{label} ({', '.join(details)})" if details else label


def _duration(seconds: float) -> str:
    if seconds < 100:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


class StageLine:
    """The lines of one stage: ``started`` (with its ``action``), then ``finished`` or ``skipped``;
    ``done`` and ``noun`` say what it did (``trained`` / ``training``, ``evaluated`` / ``evaluation``)."""

    def __init__(self, out: Path, action: str, done: str, noun: str):
        self.label = f"{_prefix()}{stage_label(out)}"
        self.action, self.done, self.noun = action, done, noun
        self._start = time.monotonic()

    def _say(self, text: str) -> None:
        if _is_main():
            log.info("%s: %s", self.label, text)

    def started(self) -> None:
        self._start = time.monotonic()
        self._say(f"{self.action} ...")

    def finished(self, headline: str | None = None) -> None:
        took = _duration(time.monotonic() - self._start)
        self._say(f"{self.done} in {took}" + (f" ({headline})" if headline else ""))

    def skipped(self, reason: str = "done", headline: str | None = None) -> None:
        """A stage not run: finished earlier (``done``), or another's result used (``reused ...``)."""
        self._say(f"{self.noun} skipped ({reason})" + (f": {headline}" if headline else ""))

    def reused(self, original: Path) -> None:
        """A training not run because the identical one in ``original`` is used (named relative to
        the run directory when it lies inside)."""
        here = _current.get()
        shown = original
        if here is not None and original.is_relative_to(here.directory.parent):
            shown = original.relative_to(here.directory.parent)
        self.skipped(f"reused {shown}")


def _count_lines(manifest: Path) -> int:
    with open(manifest, encoding="utf-8") as fh:
        return sum(1 for line in fh if line.strip())


def _many(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _steps(train_cfg: Any) -> str:
    if train_cfg.max_steps > 0:
        return _many(train_cfg.max_steps, "step")
    return f"{train_cfg.epochs:g} epoch{'' if train_cfg.epochs == 1 else 's'}"


def training_line(out: Path, train_cfg: Any, manifest: Path) -> StageLine:
    """The lines of the training into ``out`` on ``manifest`` with ``train_cfg``."""
    action = f"train {_steps(train_cfg)} on {_count_lines(manifest)} samples"
    return StageLine(out, action, "trained", "training")


def evaluation_line(out: Path, eval_cfg: Any, manifest: Path) -> StageLine:
    """The lines of the evaluation into ``out`` of ``manifest`` with ``eval_cfg``."""
    how = eval_cfg.method.replace("_", " ") + (", circular" if eval_cfg.circular else "")
    return StageLine(out, f"evaluate {_count_lines(manifest)} questions ({how})", "evaluated", "evaluation")


def loss_headline(loss: float | None) -> str | None:
    """A training's headline: its last loss."""
    return None if loss is None else f"loss {loss:.4f}"


def evaluation_headline(results: dict[str, Any]) -> str:
    """An evaluation's headline from its ``results.json``: accuracy (cIoU for boxes), unparsed."""
    overall = results["overall"]
    parts = [f"accuracy {100 * overall['accuracy']:.1f}% of {overall['n']}"]
    if "ciou" in overall:
        parts.append(f"cIoU {overall['ciou']:.3f}")
    if overall.get("unparsed"):
        parts.append(f"{overall['unparsed']} unparsed")
    return ", ".join(parts)


def report_splits(related: Any, unrelated: Any | None) -> None:
    """``[i/N target] splits: train 320 Related, 320 Unrelated; test 40; seen 80``."""
    sizes = related.sizes
    train = f"{sizes['train']} Related" + (
        "" if unrelated is None else f", {unrelated.sizes['train']} Unrelated"
    )
    if _is_main():
        log.info(
            "%ssplits: train %s; test %d; seen %d", _prefix(), train, sizes["test"], sizes.get("seen_test", 0)
        )


def _log_file() -> str | None:
    """The file the root logger writes (Hydra's job log), if any."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            return handler.baseFilename
    return None


def plan_counts(cg: Any, seen_tests: Sequence[bool]) -> dict[str, int]:
    """How many stages the protocol runs (:func:`cgmed.cg.protocol.run_target`): ``seen_tests``
    says per target whether its Trained model is evaluated on the seen combinations."""
    targets, seeds = len(seen_tests), len(cg.seeds)
    second = 1 if cg.second_method else 0
    shots = len(cg.few_shot.shots) * cg.few_shot.repeats if cg.few_shot else 0
    arms = 2 if cg.baseline_plus else 1
    seen = sum(1 for s in seen_tests if s and cg.eval_seen) * seeds
    return {
        "targets": targets,
        "seeds": seeds,
        "baseline_evaluations": targets * (1 + second + shots),
        "trainings": targets * seeds * arms,
        "trained_evaluations": targets * seeds * (arms * (1 + second) + shots) + seen,
    }


def announce_plan(cg: Any, train_cfg: Any, splits: Sequence[tuple[Any, Any]]) -> None:
    """The plan line at the start of a run, from the targets' splits (Related, Unrelated)."""
    counts = plan_counts(cg, [bool(related.sizes.get("seen_test")) for related, _ in splits])
    n, seeds = counts["targets"], counts["seeds"]
    arms = "Trained, Baseline+" if cg.baseline_plus else "Trained"
    text = (
        f"plan: {_many(n, 'target')} x {_many(seeds, 'seed')}: "
        f"{_many(counts['baseline_evaluations'], 'Baseline evaluation')}, "
        f"{_many(counts['trainings'], 'training')} of {_steps(train_cfg)} ({arms}), "
        f"{_many(counts['trained_evaluations'], 'evaluation')} of trained models"
    )
    where = _log_file()
    if _is_main():
        log.info("%s%s", text, f"; log: {where}" if where else "")
