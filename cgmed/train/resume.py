"""Resuming: which checkpoint a run continues from, and whether it is still the same run.

A checkpoint's ``trainer_state.json`` records what makes a run that run (:func:`run_identity`):
its total steps, seed, the training manifest's content hash, its global batch and its engine
(``ddp``, ``deepspeed_zero2`` ...). ``train.resume`` continues a run only with the same identity;
a difference is a ConfigError naming the key, so that a "resumed" run is never a different one.

``train.resume_allow_changes=[max_steps]`` lets a run change its total steps (extend it, or end
it earlier but not before the resumed step). The schedule rule: the learning-rate schedule is
recomputed for the new total, and from the resumed step on the run follows the schedule of a
run planned with the new total from the start (warmup length included); the lr therefore jumps
at the resumed step from the old schedule's value to the new one's, which the log states.

A checkpoint that cannot be loaded (a file missing or shorter than written, an unreadable RNG
state) is reported and the next older one is tried; when none can be, the run stops naming them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from cgmed.errors import ConfigError
from cgmed.train.checkpoint import checkpoint_problems
from cgmed.train.config import TrainConfig
from cgmed.train.distributed import problems_of_all_ranks

log = logging.getLogger(__name__)


class CheckpointUnusable(ConfigError):
    """No checkpoint ``train.resume`` names can be loaded."""


def run_identity(
    train_cfg: TrainConfig, total_steps: int, manifest_hash: str, global_batch: int, engine: str
) -> dict[str, Any]:
    """What a resumed run must share with the run that wrote its checkpoint."""
    return {
        "total_steps": total_steps,
        "seed": train_cfg.seed,
        "manifest_sha256": manifest_hash,
        "global_batch": global_batch,
        "engine": engine,
    }


def check_same_run(
    checkpoint: Path, recorded: dict[str, Any], current: dict[str, Any], cfg: TrainConfig
) -> None:
    """Refuse to resume ``checkpoint`` (its ``trainer_state.json`` is ``recorded``) into a different run."""
    for key, value in current.items():
        if key not in recorded:
            log.warning("%s records no %s (written by an older cgmed): not checked", checkpoint, key)
        elif key == "total_steps":
            _check_total_steps(checkpoint, recorded[key], value, int(recorded.get("step", 0)), cfg)
        elif recorded[key] != value:
            _refuse(checkpoint, key, recorded[key], value)


_START_OVER = "or start a new run in another directory (train.output_dir / hydra.run.dir)"


def _check_total_steps(checkpoint: Path, was: int, now: int, done: int, cfg: TrainConfig) -> None:
    steps_key = "train.epochs" if cfg.max_steps == -1 else "train.max_steps"
    if was == now:
        return
    if "max_steps" not in cfg.resume_allow_changes:
        raise ConfigError(
            steps_key,
            f"{checkpoint} belongs to a run of {was} steps; this run has {now}",
            f"set {steps_key} back to reach {was} steps, or allow the change with "
            "train.resume_allow_changes=[max_steps] (the lr schedule is then recomputed for the new "
            f"total from the resumed step), {_START_OVER}",
        )
    if now < done:
        raise ConfigError(
            steps_key,
            f"{checkpoint} is at step {done}; this run would end at step {now}",
            f"set {steps_key} to reach at least {done} steps",
        )


def _refuse(checkpoint: Path, key: str, was: Any, now: Any) -> None:
    config_key, back, what = {
        "seed": ("train.seed", f"train.seed={was}", f"train.seed={was}; this run has {now}"),
        "manifest_sha256": (
            "data.train_manifest",
            "the manifest the run started with",
            f"a training manifest of content sha256 {str(was)[:12]}...; this one has {str(now)[:12]}...",
        ),
        "global_batch": (
            "train.global_batch_size",
            f"train.global_batch_size={was}",
            f"a global batch of {was} samples per step; this run has {now}",
        ),
        "engine": (
            "distributed",
            f"the {was} engine (distributed=...)",
            f"the {was} engine; this run uses {now}",
        ),
    }[key]
    raise ConfigError(
        config_key, f"{checkpoint} was written by a run with {what}", f"resume with {back}, {_START_OVER}"
    )


def usable_checkpoints(accelerator: Any, candidates: list[Path]) -> list[Path]:
    """``candidates`` (newest first) that every rank can load; each one left out is reported, and
    when none is left the run stops naming their problems."""
    usable, skipped = [], []
    for checkpoint in candidates:
        mine = checkpoint_problems(checkpoint, accelerator.process_index)
        problems = problems_of_all_ranks(accelerator, "; ".join(mine) if mine else None)
        if not problems:
            usable.append(checkpoint)
            continue
        skipped.append(f"{checkpoint.name}: {problems[0]}")
        if accelerator.is_main_process:
            log.warning(
                "checkpoint %s cannot be loaded (%s); trying the previous one", checkpoint, problems[0]
            )
    if candidates and not usable:
        raise unusable(candidates[0].parent, skipped)
    return usable


def unusable(root: Path, problems: list[str]) -> CheckpointUnusable:
    """The error when no checkpoint of ``root`` can be loaded."""
    return CheckpointUnusable(
        "train.resume",
        f"no checkpoint in {root} can be loaded: " + " | ".join(problems),
        f"delete the damaged checkpoints (or {root} to start over), or point train.resume at an intact one",
    )


def reschedule(scheduler: Any) -> float:
    """Set the optimizer's learning rates to the schedule's value at the scheduler's current step.

    After ``load_state`` the optimizer holds the lr of the checkpoint's schedule; with a changed
    total the (recomputed) schedule differs there. Returns the new lr of the last group.
    """
    inner = getattr(scheduler, "scheduler", scheduler)  # accelerate wraps the torch scheduler
    groups = inner.optimizer.param_groups
    for group, base, factor in zip(groups, inner.base_lrs, inner.lr_lambdas, strict=True):
        group["lr"] = base * factor(inner.last_epoch)
    return groups[-1]["lr"]


__all__ = ["CheckpointUnusable", "check_same_run", "reschedule", "run_identity", "usable_checkpoints"]
