"""The accelerate ``Accelerator`` for a run: single device, DDP, DeepSpeed ZeRO or FSDP2.

Under ``accelerate launch --config_file launch/accelerate/*.yaml`` accelerate reads the launcher's
environment; under plain ``torchrun`` the ``distributed`` group names a DeepSpeed JSON or FSDP.
On CPU-only machines (tests, laptops) multi-process runs use the gloo backend, DeepSpeed
included (its CPU accelerator).
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

from cgmed.errors import ConfigError
from cgmed.train.config import DistributedConfig, TrainConfig

_PRECISION = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def deepspeed_config(path: str, train_cfg: TrainConfig, world: int) -> dict[str, Any]:
    """Read a DeepSpeed JSON and fill its ``auto`` entries from the train config."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(
            "distributed.deepspeed_config", f"{p} does not exist", "use launch/deepspeed/zero2.json ..."
        )
    cfg = json.loads(p.read_text())
    fill = {
        "train_micro_batch_size_per_gpu": train_cfg.per_device_batch_size,
        "gradient_accumulation_steps": train_cfg.grad_accum,
        "train_batch_size": train_cfg.per_device_batch_size * train_cfg.grad_accum * world,
        "gradient_clipping": train_cfg.max_grad_norm or 0.0,
    }
    for key, value in fill.items():
        if cfg.get(key, "auto") == "auto":
            cfg[key] = value
    for key, on in (("bf16", train_cfg.precision == "bf16"), ("fp16", train_cfg.precision == "fp16")):
        section = cfg.setdefault(key, {})
        if section.get("enabled", "auto") == "auto":
            section["enabled"] = on
    return cfg


def make_accelerator(dist_cfg: DistributedConfig, train_cfg: TrainConfig) -> Any:
    import torch
    from accelerate import Accelerator, PartialState
    from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs

    cpu = not torch.cuda.is_available()
    world = _world_size()
    kwargs: dict[str, Any] = {
        "mixed_precision": _PRECISION[train_cfg.precision],
        "gradient_accumulation_steps": train_cfg.grad_accum,
        # The loop steps the scheduler once per optimizer step, and its schedule counts optimizer
        # steps. accelerate's default (True) would step it num_processes times per step (it assumes
        # a schedule written for one process's batches): with 2 processes the lr ran twice as fast.
        "step_scheduler_with_optimizer": False,
        "kwargs_handlers": [
            DistributedDataParallelKwargs(find_unused_parameters=dist_cfg.find_unused_parameters),
            InitProcessGroupKwargs(timeout=timedelta(minutes=dist_cfg.timeout_minutes)),
        ],
    }
    use_ds = bool(dist_cfg.deepspeed_config) or os.environ.get("ACCELERATE_USE_DEEPSPEED", "") == "true"
    if dist_cfg.deepspeed_config and dist_cfg.fsdp:
        raise ConfigError("distributed.fsdp", "DeepSpeed and FSDP cannot both be on", "choose one")
    if use_ds:
        from accelerate.utils import DeepSpeedPlugin

        os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
        if cpu:
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        if dist_cfg.deepspeed_config:
            kwargs["deepspeed_plugin"] = DeepSpeedPlugin(
                hf_ds_config=deepspeed_config(dist_cfg.deepspeed_config, train_cfg, world)
            )
        if cpu and world > 1:
            # accelerate picks no backend for DeepSpeed without GPUs; gloo makes it multi-process.
            PartialState(backend=dist_cfg.backend or "gloo")
    elif dist_cfg.fsdp:
        from accelerate.utils import FullyShardedDataParallelPlugin

        kwargs["fsdp_plugin"] = FullyShardedDataParallelPlugin(
            fsdp_version=2,
            reshard_after_forward=True,
            state_dict_type="SHARDED_STATE_DICT",
            cpu_ram_efficient_loading=False,
        )
        os.environ.setdefault("ACCELERATE_USE_FSDP", "true")
        if cpu and world > 1:
            PartialState(backend=dist_cfg.backend or "gloo")
    else:
        kwargs["cpu"] = cpu
        if dist_cfg.backend and world > 1:
            PartialState(backend=dist_cfg.backend, cpu=cpu)
    return Accelerator(**kwargs)
