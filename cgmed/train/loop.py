"""The training loop: :func:`train` sets a run up, steps it, saves it and leaves the process clean.

The pieces, as in torchtune's recipes: :func:`cgmed.train.run.setup_run` (configs to a
:class:`~cgmed.train.run.TrainingRun`), :func:`cgmed.train.step.train_step` (one optimizer
step), :func:`save_checkpoint` / :func:`finish` (checkpoints and ``final/``), and
:func:`run_steps`, the loop that calls them and logs metrics and learning-curve points.

accelerate launch --config_file launch/accelerate/deepspeed_zero2.yaml -m cgmed.train experiment=NAME
torchrun --nproc_per_node 8 -m cgmed.train experiment=NAME distributed=deepspeed_zero2
cgmed-train experiment=NAME model.path=DIR data.train_manifest=runs/x/train.jsonl
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cgmed.atomic import atomic_write_text
from cgmed.compat import forget_hf_deepspeed_config
from cgmed.data.imaging import ImageConfig
from cgmed.progress import progress as progress_reporter
from cgmed.train import checkpoint as ckpt
from cgmed.train.config import DistributedConfig, ModelConfig, PeftConfig, TrainConfig
from cgmed.train.metrics import MetricsLogger
from cgmed.train.run import TrainingError, TrainingRun, setup_run
from cgmed.train.step import step_metrics, train_step

__all__ = ["TrainResult", "TrainingError", "evaluate_during_training", "train"]


@dataclass
class TrainResult:
    """Where a run wrote its outputs and how far it got."""

    output_dir: Path
    final_dir: Path | None  # output_dir / "final" once the last step is done, else None
    steps: int
    last_loss: float | None
    stopped_early: bool  # left after train.stop_after_steps; resume with train.resume=auto


def train(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    peft_cfg: PeftConfig,
    dist_cfg: DistributedConfig,
    train_manifest: str | None,
    output_dir: Path,
    resolved_config: dict[str, Any] | None = None,
    eval_manifests: dict[str, str] | None = None,
    image: ImageConfig | None = None,
) -> TrainResult:
    """Fine-tune ``model_cfg.path`` on ``train_manifest``; writes checkpoints, metrics and ``final/``.

    ``resolved_config`` is written to ``resolved_config.json`` and handed to wandb;
    ``eval_manifests`` (name -> test manifest) are scored every ``train.eval_every`` steps;
    ``image`` converts the images (the ``image`` group; its defaults when None).
    """
    run = setup_run(model_cfg, train_cfg, peft_cfg, dist_cfg, train_manifest, output_dir, image)
    try:
        metrics = open_metrics(run, resolved_config)
        progress = progress_bar(run)
        try:
            step, last_loss, stopped = run_steps(run, metrics, progress, eval_manifests)
        finally:
            if progress is not None:
                progress.close()
            metrics.close()
        final_dir = finish(run, step, stopped)
    finally:
        if run.lock is not None:
            run.lock.release()
    return TrainResult(output_dir, final_dir, step, last_loss, stopped)


def run_steps(
    run: TrainingRun, metrics: MetricsLogger, progress: Any, eval_manifests: dict[str, str] | None
) -> tuple[int, float | None, bool]:
    """Step from ``run.start_step`` to the last step, or until ``train.stop_after_steps``.

    Returns (the step reached, its loss, whether the run stopped early).
    """
    cfg = run.train_cfg
    step, last_loss = run.start_step, None
    bad_images = too_long = 0
    batches = iter(run.batches)
    run.model.train()
    while step < run.total_steps:
        if cfg.stop_after_steps is not None and step - run.start_step >= cfg.stop_after_steps:
            return step, last_loss, True
        result = train_step(run, batches, step + 1)
        step += 1
        last_loss = result.loss
        bad_images += result.bad_images
        too_long += result.too_long
        if step % cfg.log_every == 0 or step == run.total_steps:
            row = step_metrics(run, step, result, bad_images, too_long)
            if not metrics.rows_written:  # the first row of each start names its batch and kernels
                row.update(run.batch_record)
                row.update(run.backend)
            metrics.log(step, row)
        if progress is not None:
            progress.set_postfix(loss=f"{last_loss:.4f}", refresh=False)
            progress.update(1)
        if eval_manifests and cfg.eval_every and (step % cfg.eval_every == 0 or step == run.total_steps):
            curve_dir = run.output_dir / "curve" / f"step-{step:06d}"
            point = evaluate_during_training(
                run.accelerator, run.model, run.processor, run.adapter, eval_manifests, curve_dir, run.image
            )
            metrics.log(step, point)
        if cfg.save_every and step % cfg.save_every == 0 and step < run.total_steps:
            save_checkpoint(run, step)
    return step, last_loss, False


def save_checkpoint(run: TrainingRun, step: int) -> Path:
    """Checkpoint ``step`` of the run (atomic; the last ``train.keep_last`` are kept)."""
    cfg = run.train_cfg
    return ckpt.save_checkpoint(
        run.accelerator,
        run.output_dir,
        step,
        run.trainer_state(step),
        cfg.keep_last,
        run.save_kwargs,
        model=run.model,
    )


def finish(run: TrainingRun, step: int, stopped: bool) -> Path | None:
    """The run's last checkpoint and, when every step is done, ``final/`` (returned, else None).

    Leaves the process able to train and evaluate other models (``cgmed-cg`` does).
    """
    if step > run.start_step and (stopped or step == run.total_steps):
        save_checkpoint(run, step)
    final_dir = None
    if step == run.total_steps:
        final_dir = ckpt.save_final(
            run.accelerator, run.model, run.processor, run.output_dir / ckpt.FINAL, run.trainer_state(step)
        )
    run.accelerator.wait_for_everyone()
    if run.deepspeed:
        forget_hf_deepspeed_config()
    # No end_training(): it destroys the process group, and cgmed-cg trains several models in one
    # process. The CLI tears the group down at exit.
    return final_dir


def open_metrics(run: TrainingRun, resolved_config: dict[str, Any] | None) -> MetricsLogger:
    """The run's metrics logger (rows past a resumed checkpoint dropped); writes ``resolved_config.json``."""
    cfg = run.train_cfg
    metrics = MetricsLogger(
        run.output_dir,
        run.is_main,
        cfg.tensorboard,
        cfg.wandb,
        cfg.wandb_project,
        cfg.wandb_mode,
        resolved_config,
        resume_step=run.start_step if run.resumed_from is not None else None,
    )
    if run.is_main and resolved_config is not None:
        # what this launch resolved: grad_accum derived from train.global_batch_size, the process count
        recorded = {**resolved_config, "run": run.batch_record, "backend": run.backend}
        if isinstance(recorded.get("train"), dict):
            recorded["train"] = {**recorded["train"], "grad_accum": cfg.grad_accum}
        atomic_write_text(
            run.output_dir / "resolved_config.json", json.dumps(recorded, indent=1, default=str) + "\n"
        )
    return metrics


def progress_bar(run: TrainingRun) -> Any:
    """The steps' progress on the main process as ``train.progress_bar`` asks (a bar on a terminal,
    plain lines in a log: :func:`cgmed.progress.progress`), else None."""
    if not run.is_main:
        return None
    return progress_reporter(
        run.total_steps, "train", run.train_cfg.progress_bar, unit="step", initial=run.start_step
    )


def evaluate_during_training(
    accelerator: Any,
    model: Any,
    processor: Any,
    adapter: Any,
    manifests: dict[str, str],
    out: Path,
    image: ImageConfig | None = None,
) -> dict[str, float]:
    """Option-scoring accuracy of the current weights on each manifest (a point of a CG learning curve)."""
    from cgmed.eval.run import evaluate
    from cgmed.eval.score import EvalConfig

    inner = accelerator.unwrap_model(model)
    inner.eval()
    values = {}
    for name, manifest in manifests.items():
        doc = evaluate(
            "(training)",
            EvalConfig(bootstrap=0),
            manifest,
            out / name,
            model=(inner, processor, adapter),
            image=image,
            progress=False,  # a bar inside the training's bar would only flicker
        )
        values[f"eval/{name}/accuracy"] = doc["overall"]["accuracy"]
    inner.train()
    return values
