"""The set-up piece of a training run: from configs to a :class:`TrainingRun` ready to step.

:func:`setup_run` checks what can be wrong before the model loads, then builds the accelerator,
model, optimizer, schedule and this rank's batches, and restores a checkpoint when resuming.
Its order is part of the result: the seeded draws (LoRA initialisation, the batch order) happen
in the same order in a fresh and in a resumed run, and ``load_state`` then restores every rank's
RNG, so a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cgmed.errors import CgmedError, ConfigError
from cgmed.models.collate import Collator
from cgmed.models.registry import BackboneAdapter
from cgmed.train import checkpoint as ckpt
from cgmed.train.config import DistributedConfig, ModelConfig, PeftConfig, TrainConfig
from cgmed.train.data import (
    BatchPlan,
    ManifestDataset,
    RankBatchSampler,
    SkippingCollate,
    steps_for,
    text_lengths,
)
from cgmed.train.distributed import make_accelerator
from cgmed.train.setup import apply_training_mode, load_model, optimizer_and_scheduler, resolve_adapter

log = logging.getLogger(__name__)


class TrainingError(CgmedError):
    """The run cannot go on (a non-finite loss, ...); the last good checkpoint is kept."""


@dataclass
class TrainingRun:
    """Everything a set-up run holds; the step, save and loop pieces read it."""

    train_cfg: TrainConfig
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
    start_step: int = 0
    resumed_from: Path | None = None
    batches: Any = None  # DataLoader of this rank's micro-batches from start_step on

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
    def save_kwargs(self) -> dict[str, Any]:
        # a LoRA checkpoint under DeepSpeed holds the adapter only, not the frozen base weights
        return {"exclude_frozen_parameters": True} if (self.deepspeed and self.lora) else {}

    @property
    def load_kwargs(self) -> dict[str, Any]:
        return {"load_module_strict": False} if (self.deepspeed and self.lora) else {}

    def trainer_state(self, step: int) -> dict[str, Any]:
        """The ``trainer_state.json`` of a checkpoint at optimizer step ``step``."""
        micro = step * self.train_cfg.grad_accum
        return {
            "step": step,
            "micro_batches": micro,
            "epoch": micro / max(1, self.plan.micro_batches_per_epoch()),
            "global_batch": self.global_batch,
            "world_size": self.world,
            "total_steps": self.total_steps,
            "seed": self.train_cfg.seed,
        }


def setup_run(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    peft_cfg: PeftConfig,
    dist_cfg: DistributedConfig,
    train_manifest: str | None,
    output_dir: Path,
) -> TrainingRun:
    """Build (and, with ``train.resume``, restore) everything a run needs; see the module docstring."""
    import torch
    from accelerate.utils import set_seed

    if not train_manifest:
        raise ConfigError("data.train_manifest", "is required", "data.train_manifest=runs/NAME/train.jsonl")
    # everything that can be wrong is checked before the model loads
    adapter = resolve_adapter(model_cfg)
    resume_from = ckpt.resolve_resume(train_cfg.resume, output_dir)
    dataset = ManifestDataset(train_manifest)

    accelerator = make_accelerator(dist_cfg, train_cfg)
    set_seed(train_cfg.seed)
    if train_cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    model, processor = load_model(model_cfg, peft_cfg, adapter)
    model = apply_training_mode(model, adapter, peft_cfg, train_cfg)
    collator = Collator(adapter, processor, train_cfg.max_length, train_cfg.on_overflow)
    lengths = text_lengths(dataset, collator) if train_cfg.group_by_length else None
    global_micro_batch = train_cfg.per_device_batch_size * accelerator.num_processes
    plan = BatchPlan(lengths, len(dataset), global_micro_batch, train_cfg.seed)
    total_steps = steps_for(plan, train_cfg.grad_accum, train_cfg.max_steps, train_cfg.epochs)
    optimizer, scheduler = optimizer_and_scheduler(model, adapter, train_cfg, total_steps)
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
        total_steps=total_steps,
        lora=lora,
        deepspeed=accelerator.distributed_type.value == "DEEPSPEED",
    )
    if resume_from is not None:
        restore(run, resume_from)
    run.batches = batch_loader(run, dataset, collator)
    return run


def restore(run: TrainingRun, checkpoint: Path) -> None:
    """Load ``checkpoint`` (weights, optimizer, schedule, every rank's RNG) and move to its step."""
    state = ckpt.read_state(checkpoint)
    if state["global_batch"] != run.global_batch:
        raise TrainingError(
            f"{checkpoint} was trained with a global batch of {state['global_batch']}, this run has "
            f"{run.global_batch}; resume with the same batch size x processes"
        )
    run.accelerator.load_state(str(checkpoint), **run.load_kwargs)
    run.start_step = int(state["step"])
    run.resumed_from = checkpoint
    if run.is_main:
        log.info("resumed from %s at step %d", checkpoint, run.start_step)


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
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=SkippingCollate(collator, cfg.max_bad_images),
        num_workers=cfg.num_workers,
        persistent_workers=False,
    )
