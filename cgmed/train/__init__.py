"""Fine-tuning: ``python -m cgmed.train`` (also ``cgmed-train``) runs :func:`train`.

The trainer is split into pieces as torchtune's recipes are:

* ``config``: the ``model``, ``train``, ``peft`` and ``distributed`` config groups, and the
  global batch (``train.global_batch_size``) resolved for a launch's process count;
* ``loop``: :func:`train`, the loop that calls the pieces below, and evaluation during training;
* ``run``: ``setup_run``, configs to a ``TrainingRun`` (accelerator, model, optimizer, batches,
  restored checkpoint);
* ``step``: one optimizer step over the micro-batches of gradient accumulation;
* ``checkpoint``: atomic checkpoints checked before loading, and the final model with its
  completion marker (``is_complete``);
* ``resume``: which checkpoint a run continues from, and whether it is still the same run;
* ``lock``: one run per directory at a time (``cgmed.lock``);
* ``files``: atomic writes, completion markers, disk-full messages;
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
