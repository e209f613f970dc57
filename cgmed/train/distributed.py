"""The accelerate ``Accelerator`` for a run: single device, DDP, DeepSpeed ZeRO or FSDP2.

Under ``accelerate launch --config_file launch/accelerate/*.yaml`` accelerate reads the launcher's
environment; under plain ``torchrun`` the ``distributed`` group names a DeepSpeed JSON or FSDP.
On CPU-only machines (tests, laptops) multi-process runs use the gloo backend, DeepSpeed
included (its CPU accelerator).
"""

from __future__ import annotations

import json
import logging
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

from cgmed.compat import adopt_deepspeed_config, deepspeed_process_state_on_cpu
from cgmed.conf import DEEPSPEED_DIR
from cgmed.errors import ConfigError
from cgmed.train.config import DistributedConfig, TrainConfig, resolve_global_batch

log = logging.getLogger(__name__)

_PRECISION = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}


def world_size() -> int:
    """Processes of this launch, as the launcher (torchrun, accelerate launch) announces them."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def fill_deepspeed_auto(cfg: dict[str, Any], train_cfg: TrainConfig, world: int) -> dict[str, Any]:
    """Fill a DeepSpeed config's ``auto`` entries (batch, accumulation, clipping, precision) in place.

    With ``train.global_batch_size`` set, the accumulation is the one derived for ``world`` processes.
    """
    train_cfg = resolve_global_batch(train_cfg, world)
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


def deepspeed_config(path: str, train_cfg: TrainConfig, world: int) -> dict[str, Any]:
    """Read a DeepSpeed JSON and fill its ``auto`` entries from the train config."""
    p = Path(path)
    if not p.is_absolute() and not p.is_file():
        # the shipped configs name deepspeed/<name>.json inside the package's config directory
        p = DEEPSPEED_DIR.parent / p
    if not p.is_file():
        shipped = ", ".join(f"deepspeed/{q.name}" for q in sorted(DEEPSPEED_DIR.glob("*.json")))
        raise ConfigError(
            "distributed.deepspeed_config",
            f"{path} does not exist (relative paths are looked up in the working directory, then "
            f"in {DEEPSPEED_DIR.parent})",
            f"give an existing JSON file or a shipped one: {shipped}",
        )
    return fill_deepspeed_auto(json.loads(p.read_text()), train_cfg, world)


def _uses_deepspeed(dist_cfg: DistributedConfig) -> bool:
    """DeepSpeed is on through the ``distributed`` group (torchrun) or accelerate's launcher."""
    return bool(dist_cfg.deepspeed_config) or os.environ.get("ACCELERATE_USE_DEEPSPEED", "") == "true"


def init_process_state(dist_cfg: DistributedConfig) -> Any:
    """Set up this process's accelerate ``PartialState`` the way the run's Accelerator will need it.

    Drivers that do other work before training (``cgmed-cg`` builds data and evaluates on every
    rank) call it first, so that their barriers and the later Accelerator share one process group.
    """
    import torch
    from accelerate import PartialState

    cpu = not torch.cuda.is_available()
    world = world_size()
    if _uses_deepspeed(dist_cfg):
        os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
        if cpu:
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
            if world > 1:
                return deepspeed_process_state_on_cpu(dist_cfg.backend)
        return PartialState()
    if dist_cfg.fsdp:
        return PartialState()
    if dist_cfg.backend and world > 1:
        return PartialState(backend=dist_cfg.backend, cpu=cpu)
    return PartialState(cpu=cpu)


def make_accelerator(dist_cfg: DistributedConfig, train_cfg: TrainConfig) -> Any:
    """The run's ``Accelerator``: precision, accumulation and the distribution the config and launcher ask for.

    Refuses a choice that would leave the ranks training unsynchronised copies.
    """
    import torch
    from accelerate import Accelerator

    cpu = not torch.cuda.is_available()
    world = world_size()
    train_cfg = resolve_global_batch(train_cfg, world)
    kwargs = _base_kwargs(dist_cfg, train_cfg)
    use_deepspeed = _uses_deepspeed(dist_cfg)
    _check_distribution(dist_cfg, use_deepspeed, cpu, world)
    init_process_state(dist_cfg)
    kwargs.update(_distribution_kwargs(dist_cfg, train_cfg, use_deepspeed, cpu, world))
    plugin = kwargs.get("deepspeed_plugin")
    if plugin is not None and adopt_deepspeed_config(plugin):
        del kwargs["deepspeed_plugin"]
    accelerator = Accelerator(**kwargs)
    if use_deepspeed and "deepspeed_plugin" not in kwargs:
        # accelerate launch with a ZeRO stage in the yaml instead of a JSON file (an adopted config
        # is filled already; filling it again changes nothing)
        fill_deepspeed_auto(accelerator.state.deepspeed_plugin.deepspeed_config, train_cfg, world)
    if world > 1 and (accelerator.distributed_type.value == "NO" or accelerator.num_processes != world):
        raise ConfigError(
            "distributed",
            f"{world} processes were started but accelerate set up {accelerator.distributed_type.value} "
            f"with {accelerator.num_processes} process(es): the ranks would train unsynchronised copies",
            "start with torchrun or accelerate launch and a supported distributed=... choice",
        )
    return accelerator


def engine_name(accelerator: Any) -> str:
    """The engine a run trains with: ``ddp`` (one process or DDP: the same maths and checkpoint
    layout), ``deepspeed_zero<stage>`` or ``fsdp``."""
    kind = accelerator.distributed_type.value
    if kind == "DEEPSPEED":
        return f"deepspeed_zero{accelerator.state.deepspeed_plugin.zero_stage}"
    return "fsdp" if kind == "FSDP" else "ddp"


def problems_of_all_ranks(accelerator: Any, problem: str | None) -> list[str]:
    """Every rank's ``problem`` (None where it had none), gathered on every rank.

    Lets all ranks take the same decision (fall back, stop) when only some met a problem, instead
    of leaving the others waiting at the next collective.
    """
    if accelerator.num_processes == 1:
        return [problem] if problem else []
    from accelerate.utils import gather_object

    return [p for p in gather_object([problem]) if p]


def _check_distribution(dist_cfg: DistributedConfig, use_deepspeed: bool, cpu: bool, world: int) -> None:
    """Refuse distribution choices that cannot work together or on this machine."""
    use_fsdp = dist_cfg.fsdp or os.environ.get("ACCELERATE_USE_FSDP", "") == "true"
    if dist_cfg.deepspeed_config and dist_cfg.fsdp:
        raise ConfigError("distributed.fsdp", "DeepSpeed and FSDP cannot both be on", "choose one")
    if use_fsdp and not use_deepspeed and cpu and world > 1:
        # accelerate (1.x) selects FSDP only on accelerator devices (MULTI_GPU, NPU, XPU, ...); on CPU
        # it silently falls back to no distribution at all (each rank trains its own copy).
        raise ConfigError(
            "distributed.fsdp",
            "FSDP2 needs GPUs: accelerate does not run FSDP on CPU processes (gloo)",
            "on CPU use distributed=ddp or distributed=deepspeed_zero2 / deepspeed_zero3",
        )


def _base_kwargs(dist_cfg: DistributedConfig, train_cfg: TrainConfig) -> dict[str, Any]:
    """Accelerator arguments every distribution shares: precision, accumulation, process group."""
    from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs

    precision = _PRECISION[train_cfg.precision]
    launcher_precision = os.environ.get("ACCELERATE_MIXED_PRECISION")
    if launcher_precision not in (None, "", "no", precision):
        log.warning(
            "the launcher asks for mixed_precision=%s but train.precision=%s wins (%s); set "
            "train.precision to match the accelerate config",
            launcher_precision,
            train_cfg.precision,
            precision,
        )
    return {
        "mixed_precision": precision,
        "gradient_accumulation_steps": train_cfg.grad_accum,
        # The loop steps the scheduler once per optimizer step, and its schedule counts optimizer
        # steps. accelerate's default (True) would step it num_processes times per step (it assumes
        # a schedule written for one process's batches): with 2 processes the lr would run twice as fast.
        "step_scheduler_with_optimizer": False,
        "kwargs_handlers": [
            DistributedDataParallelKwargs(find_unused_parameters=dist_cfg.find_unused_parameters),
            InitProcessGroupKwargs(timeout=timedelta(minutes=dist_cfg.timeout_minutes)),
        ],
    }


def _distribution_kwargs(
    dist_cfg: DistributedConfig, train_cfg: TrainConfig, use_deepspeed: bool, cpu: bool, world: int
) -> dict[str, Any]:
    """The DeepSpeed or FSDP2 plugin, or the CPU switch of a plain run."""
    if use_deepspeed:
        from accelerate.utils import DeepSpeedPlugin

        # torchrun: distributed.deepspeed_config; accelerate launch: the yaml's deepspeed_config_file.
        # Either way cgmed fills the JSON's "auto" entries: accelerate would only fill the micro
        # batch size from a prepared DataLoader, which this loop does not hand to it.
        deepspeed_file = dist_cfg.deepspeed_config or os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
        if not deepspeed_file or deepspeed_file == "none":
            return {}
        return {
            "deepspeed_plugin": DeepSpeedPlugin(
                hf_ds_config=deepspeed_config(deepspeed_file, train_cfg, world)
            )
        }
    if dist_cfg.fsdp:
        from accelerate.utils import FullyShardedDataParallelPlugin

        plugin = FullyShardedDataParallelPlugin(
            fsdp_version=2,
            reshard_after_forward=True,
            state_dict_type="SHARDED_STATE_DICT",
            cpu_ram_efficient_loading=False,
        )
        os.environ.setdefault("ACCELERATE_USE_FSDP", "true")
        return {"fsdp_plugin": plugin}
    return {"cpu": cpu}
