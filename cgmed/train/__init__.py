"""Fine-tuning: ``python -m cgmed.train`` (also ``cgmed-train``) runs :func:`train`.

The trainer is split into pieces as torchtune's recipes are:

* ``config``: the ``model``, ``train``, ``peft`` and ``distributed`` config groups;
* ``loop``: :func:`train`, the loop that calls the pieces below, and evaluation during training;
* ``run``: ``setup_run``, configs to a ``TrainingRun`` (accelerator, model, optimizer, batches,
  restored checkpoint);
* ``step``: one optimizer step over the micro-batches of gradient accumulation;
* ``checkpoint``: atomic checkpoints, resume, and the final model;
* ``setup``: model loading, QLoRA, freezing, LoRA, parameter groups, optimizer and schedule;
* ``data``: the training manifest, the batch order shared by all ranks, the skipping collate;
* ``distributed``: the accelerate ``Accelerator`` (single device, DDP, DeepSpeed, FSDP2);
* ``metrics``: ``metrics.jsonl``, TensorBoard and wandb.

Workarounds for accelerate and transformers behaviour live in :mod:`cgmed.compat`.
"""

from cgmed.train.config import DistributedConfig, ModelConfig, PeftConfig, TrainConfig
from cgmed.train.loop import TrainingError, TrainResult, train

__all__ = [
    "DistributedConfig",
    "ModelConfig",
    "PeftConfig",
    "TrainConfig",
    "TrainResult",
    "TrainingError",
    "train",
]
