"""The set-up piece of a training run: from configs to a :class:`TrainingRun` ready to step.

:func:`setup_run` checks what can be wrong before the model loads (configs, the global batch for
this launch's process count, the run directory's lock, the checkpoint to resume and whether it
belongs to this run), then builds the accelerator, model, optimizer, schedule and this rank's
batches, and restores the checkpoint. Its order is part of the result: the seeded draws (LoRA
initialisation, the batch order) happen in the same order in a fresh and in a resumed run, and
``load_state`` then restores every rank's RNG, so a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cgmed.data.imaging import ImageConfig
from cgmed.errors import CgmedError, ConfigError
from cgmed.models.collate import Collator
from cgmed.models.registry import BackboneAdapter
from cgmed.train import checkpoint as ckpt
from cgmed.train.config import DistributedConfig, ModelConfig, PeftConfig, TrainConfig, resolve_global_batch
from cgmed.train.data import (
    BatchPlan,
    ManifestDataset,
    RankBatchSampler,
    SkippingCollate,
    manifest_sha256,
    steps_for,
    text_lengths,
)
from cgmed.train.distributed import engine_name, make_accelerator, problems_of_all_ranks, world_size
from cgmed.train.lock import RunLock, acquire_on_main
from cgmed.train.resume import check_same_run, reschedule, run_identity, unusable, usable_checkpoints
from cgmed.train.setup import (
    apply_training_mode,
    load_model,
    optimizer_and_scheduler,
    resolve_adapter,
    resolve_num_workers,
    resolve_optimizer_impl,
)

log = logging.getLogger(__name__)


class TrainingError(CgmedError):
    """The run cannot go on (a non-finite loss, ...); the last good checkpoint is kept."""


@dataclass
class TrainingRun:
    """Everything a set-up run holds; the step, save and loop pieces read it."""

    train_cfg: TrainConfig  # grad_accum as derived from train.global_batch_size for this launch
    output_dir: Path
    accelerator: Any
    model: Any  # as prepared by accelerate (DDP module, DeepSpeed engine, ...)
    processor: Any
    adapter: BackboneAdapter
    optimizer: Any
    scheduler: Any
    plan: BatchPlan
    total_steps: int
    lora: bool
    deepspeed: bool
    identity: dict[str, Any]  # what a checkpoint must share to be resumed (see cgmed.train.resume)
    start_step: int = 0
    resumed_from: Path | None = None
    batches: Any = None  # DataLoader of this rank's micro-batches from start_step on
    lock: RunLock | None = None  # the run directory's lock, held by the main process
    # the kernels and loader settings this launch resolved (attention, optimizer, precision ...)
    backend: dict[str, Any] = field(default_factory=dict)
    image: ImageConfig | None = None  # how images are converted (the image group), for evaluation too

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def global_batch(self) -> int:
        """Samples per optimizer step over all ranks."""
        return self.plan.global_batch * self.train_cfg.grad_accum

    @property
    def batch_record(self) -> dict[str, Any]:
        """The effective batch and engine, as the run records them (resolved config, metrics)."""
        return {**self.train_cfg.effective_batch(self.world), "engine": self.identity["engine"]}

    @property
    def save_kwargs(self) -> dict[str, Any]:
        # a LoRA checkpoint under DeepSpeed holds the adapter only, not the frozen base weights
        return {"exclude_frozen_parameters": True} if (self.deepspeed and self.lora) else {}

    @property
    def load_kwargs(self) -> dict[str, Any]:
        return {"load_module_strict": False} if (self.deepspeed and self.lora) else {}

    def trainer_state(self, step: int) -> dict[str, Any]:
        """The ``trainer_state.json`` of a checkpoint at optimizer step ``step``."""
        cfg = self.train_cfg
        micro = step * cfg.grad_accum
        return {
            "step": step,
            "micro_batches": micro,
            "epoch": micro / max(1, self.plan.micro_batches_per_epoch()),
            **self.identity,
            "max_steps": cfg.max_steps,
            "per_device_batch_size": cfg.per_device_batch_size,
            "grad_accum": cfg.grad_accum,
            "world_size": self.world,
        }


@dataclass
class RunStart:
    """Where a run starts: its step count, its identity and the checkpoints it may resume from."""

    total_steps: int
    identity: dict[str, Any]
    checkpoints: list[Path]  # loadable ones, newest first; empty for a fresh start


def setup_run(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    peft_cfg: PeftConfig,
    dist_cfg: DistributedConfig,
    train_manifest: str | None,
    output_dir: Path,
    image: ImageConfig | None = None,
) -> TrainingRun:
    """Build (and, with ``train.resume``, restore) everything a run needs; see the module docstring.

    The returned run holds the run directory's lock; :func:`cgmed.train.loop.train` releases it.
    """
    if not train_manifest:
        raise ConfigError("data.train_manifest", "is required", "data.train_manifest=runs/NAME/train.jsonl")
    adapter = resolve_adapter(model_cfg)
    dataset = ManifestDataset(train_manifest)
    train_cfg = resolve_global_batch(train_cfg, world_size())
    accelerator = make_accelerator(dist_cfg, train_cfg)
    lock = acquire_on_main(output_dir, "cgmed-train", accelerator)
    try:
        start = plan_start(accelerator, train_cfg, dataset, output_dir)
        run = build_run(
            model_cfg, train_cfg, peft_cfg, adapter, accelerator, dataset, output_dir, start, image
        )
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    run.lock = lock
    return run


def plan_start(
    accelerator: Any, train_cfg: TrainConfig, dataset: ManifestDataset, output_dir: Path
) -> RunStart:
    """Clean what an interrupted run left, count the steps, and pick the checkpoint to resume
    (loadable on every rank, and written by this same run)."""
    if accelerator.is_main_process:
        for leftover in ckpt.remove_leftovers(output_dir):
            log.warning("removed %s, left by an interrupted run", leftover)
    accelerator.wait_for_everyone()
    global_micro = train_cfg.per_device_batch_size * accelerator.num_processes
    total_steps = steps_for(
        len(dataset), global_micro, train_cfg.grad_accum, train_cfg.max_steps, train_cfg.epochs
    )
    identity = run_identity(
        train_cfg,
        total_steps,
        manifest_sha256(dataset.path),
        global_micro * train_cfg.grad_accum,
        engine_name(accelerator),
    )
    checkpoints = usable_checkpoints(accelerator, ckpt.resume_candidates(train_cfg.resume, output_dir))
    if checkpoints:
        check_same_run(checkpoints[0], ckpt.read_state(checkpoints[0]), identity, train_cfg)
    return RunStart(total_steps, identity, checkpoints)


def build_run(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    peft_cfg: PeftConfig,
    adapter: BackboneAdapter,
    accelerator: Any,
    dataset: ManifestDataset,
    output_dir: Path,
    start: RunStart,
    image: ImageConfig | None = None,
) -> TrainingRun:
    """Seed, load the model, set its training mode, plan the batches, build the optimizer and
    schedule, prepare them with accelerate, and restore ``start``'s checkpoint."""
    import torch
    from accelerate.utils import set_seed

    set_seed(train_cfg.seed)
    if train_cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    model, processor = load_model(model_cfg, peft_cfg, adapter)
    attention = getattr(model.config, "_attn_implementation", None) or model_cfg.attn_implementation
    model = apply_training_mode(model, adapter, peft_cfg, train_cfg)
    collator = Collator(adapter, processor, train_cfg.max_length, train_cfg.on_overflow, image=image)
    lengths = text_lengths(dataset, collator) if train_cfg.group_by_length else None
    global_micro_batch = train_cfg.per_device_batch_size * accelerator.num_processes
    plan = BatchPlan(lengths, len(dataset), global_micro_batch, train_cfg.seed)
    trainable = [p for p in model.parameters() if p.requires_grad]
    impl = resolve_optimizer_impl(train_cfg.optimizer_impl, accelerator.device.type, trainable)
    optimizer, scheduler = optimizer_and_scheduler(model, adapter, train_cfg, start.total_steps, impl)
    lora = peft_cfg.method != "full"
    if lora:
        ckpt.register_lora_hooks(accelerator)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    run = TrainingRun(
        train_cfg=train_cfg,
        output_dir=output_dir,
        accelerator=accelerator,
        model=model,
        processor=processor,
        adapter=adapter,
        optimizer=optimizer,
        scheduler=scheduler,
        plan=plan,
        total_steps=start.total_steps,
        lora=lora,
        deepspeed=accelerator.distributed_type.value == "DEEPSPEED",
        identity=start.identity,
        image=collator.image,
    )
    run.backend = backend_record(model_cfg, train_cfg, attention, impl, accelerator.device.type)
    if start.checkpoints:
        restore(run, start.checkpoints)
    run.batches = batch_loader(run, dataset, collator)
    if run.is_main:
        batch = run.batch_record
        log.info(
            "global batch %d = per-device %d x grad_accum %d x %d process(es), engine %s, %d steps",
            *(batch[k] for k in ("global_batch_size", "per_device_batch_size", "grad_accum", "world_size")),
            batch["engine"],
            run.total_steps,
        )
    return run


def restore(run: TrainingRun, checkpoints: list[Path]) -> None:
    """Load the newest of ``checkpoints`` that loads on every rank (weights, optimizer, schedule,
    every rank's RNG) and move to its step; a failed one is reported and the next older tried."""
    failures = []
    for i, checkpoint in enumerate(checkpoints):
        state = ckpt.read_state(checkpoint)
        if i:  # the newest was checked before the model loaded
            check_same_run(checkpoint, state, run.identity, run.train_cfg)
        error = None
        try:
            run.accelerator.load_state(str(checkpoint), **run.load_kwargs)
        except Exception as err:  # every rank must learn of it, or the others go on alone
            error = f"{type(err).__name__}: {err}"
        problems = problems_of_all_ranks(run.accelerator, error)
        if problems:
            failures.append(f"{checkpoint.name}: {problems[0]}")
            if run.is_main:
                log.warning(
                    "checkpoint %s failed to load (%s); trying the previous one", checkpoint, problems[0]
                )
            continue
        run.start_step = int(state["step"])
        run.resumed_from = checkpoint
        if run.is_main:
            log.info("resumed from %s at step %d", checkpoint, run.start_step)
        if state.get("total_steps", run.total_steps) != run.total_steps:
            _follow_new_total(run, int(state["total_steps"]))
        return
    raise unusable(checkpoints[0].parent, failures)


def _follow_new_total(run: TrainingRun, old_total: int) -> None:
    """A resumed run whose total steps changed (train.resume_allow_changes=[max_steps])."""
    lr = reschedule(run.scheduler)
    if run.is_main:
        log.warning(
            "train.max_steps changed: %d -> %d steps (allowed by train.resume_allow_changes). The lr "
            "schedule is recomputed for %d steps and followed from step %d on: lr %.6g now",
            old_total,
            run.total_steps,
            run.total_steps,
            run.start_step,
            lr,
        )


def backend_record(
    model_cfg: ModelConfig, train_cfg: TrainConfig, attention: str, optimizer_impl: str, device_type: str
) -> dict[str, Any]:
    """What a run computes with, as it records it: the attention kernel the model loaded with,
    Liger, weights' dtype, precision, gradient checkpointing, the AdamW implementation and the
    DataLoader settings (``resolved_config.json``'s ``backend`` and the first metrics row)."""
    return {
        "attn_implementation": attention,
        "use_liger": model_cfg.use_liger,
        "dtype": model_cfg.dtype,
        "precision": train_cfg.precision,
        "gradient_checkpointing": train_cfg.gradient_checkpointing,
        "optimizer_impl": optimizer_impl,
        **loader_settings(train_cfg, device_type),
    }


def loader_settings(cfg: TrainConfig, device_type: str) -> dict[str, Any]:
    """The DataLoader's worker and memory settings on ``device_type`` (see
    :func:`cgmed.train.setup.resolve_num_workers`): pinned memory for copies to CUDA, workers
    kept alive across epochs when there are any."""
    workers = resolve_num_workers(cfg.num_workers, device_type, os.cpu_count())
    return {
        "num_workers": workers,
        "pin_memory": device_type == "cuda",
        "persistent_workers": workers > 0,
    }


def batch_loader(run: TrainingRun, dataset: ManifestDataset, collator: Collator) -> Any:
    """A DataLoader of this rank's micro-batches from ``run.start_step`` to the last step."""
    from torch.utils.data import DataLoader

    cfg = run.train_cfg
    sampler = RankBatchSampler(
        run.plan,
        cfg.grad_accum,
        run.start_step,
        run.total_steps,
        run.accelerator.process_index,
        cfg.per_device_batch_size,
    )
    settings = {key: run.backend[key] for key in ("num_workers", "pin_memory", "persistent_workers")}
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=SkippingCollate(collator, cfg.max_bad_images),
        **settings,
    )
