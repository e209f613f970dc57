"""Config groups of ``cgmed-train``: ``model``, ``train``, ``peft`` and ``distributed``.

Each group is one dataclass; its defaults are the only defaults (``cgmed/conf/<group>/*.yaml``
files only state what differs). Cross-field rules live in ``__post_init__`` so a bad
combination fails at start-up with the key and the fix.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from cgmed.errors import ConfigError
from cgmed.models.registry import ATTN_IMPLEMENTATIONS, PARTS


@dataclass
class ModelConfig:
    """``model``: which backbone to load and how."""

    family: str | None = None  # qwen2_vl | qwen2_5_vl | llava | mllama; null = read config.json's model_type
    path: str | None = None  # a local checkpoint directory or a hub id
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "float32"
    min_pixels: int | None = (
        None  # Qwen family: bounds on each image's pixels (visual tokens = pixels / 28^2)
    )
    max_pixels: int | None = None
    trust_remote_code: bool = False
    # sdpa (torch's fused attention), flash_attention_2 (needs the flash-attn package) or eager
    attn_implementation: Literal["sdpa", "flash_attention_2", "eager"] = "sdpa"
    use_liger: bool = False  # Liger kernels (RMSNorm, RoPE, SwiGLU) where liger-kernel supports the family

    def __post_init__(self) -> None:
        if self.attn_implementation not in ATTN_IMPLEMENTATIONS:
            raise ConfigError(
                "model.attn_implementation",
                f"{self.attn_implementation!r} is not one of {list(ATTN_IMPLEMENTATIONS)}",
                "use sdpa (the default), flash_attention_2 or eager",
            )


@dataclass
class PeftConfig:
    """``peft``: full fine-tuning, LoRA or QLoRA (4-bit NF4 base + LoRA)."""

    method: Literal["full", "lora", "qlora"] = "full"
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] | None = None  # explicit module names / suffixes; null = the parts below
    target_language: bool = True  # LoRA on the language model's linear layers (the default target)
    target_vision: bool = False
    target_projector: bool = False
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ConfigError("peft.r", f"must be >= 1, got {self.r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError("peft.dropout", f"must be in [0, 1), got {self.dropout}")
        if (
            self.method != "full"
            and self.target_modules is None
            and not (self.target_language or self.target_vision or self.target_projector)
        ):
            raise ConfigError(
                "peft.target_language",
                "LoRA has no target: target_language, target_vision and target_projector are all false",
                "set peft.target_language=true or list peft.target_modules",
            )


@dataclass
class TrainConfig:
    """``train``: the optimisation loop, checkpoints and logging."""

    output_dir: str | None = None  # null = the Hydra run directory
    seed: int = 42
    max_steps: int = 100  # optimizer steps; -1 = run train.epochs
    epochs: float = 1.0
    stop_after_steps: int | None = None  # leave the loop after N steps of this run (time slices, tests)
    per_device_batch_size: int = 4
    grad_accum: int = 1
    # samples per optimizer step over all processes; grad_accum is then derived from the process
    # count (global = per_device_batch_size x grad_accum x processes). null = that product as given
    global_batch_size: int | None = None
    lr: float = 2e-5  # lr 0 for a part (train.lr_vision=0 ...) freezes that part
    lr_vision: float | None = None  # null = train.lr
    lr_projector: float | None = None
    lr_language: float | None = None
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    warmup_ratio: float = 0.03
    warmup_steps: int | None = None  # overrides warmup_ratio
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: float = 0.0  # cosine decays to lr * min_lr_ratio
    max_grad_norm: float | None = 1.0
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    gradient_checkpointing: bool = False
    freeze_vision: bool = False
    freeze_projector: bool = False
    freeze_language: bool = False
    max_length: int = 2048
    on_overflow: Literal["drop", "error"] = "drop"
    max_bad_images: int = 100  # unreadable images skipped (and counted) before the run stops
    group_by_length: bool = True
    # DataLoader worker processes; null = 4 on CUDA (at most the CPU count), 0 on CPU (where
    # workers would take the cores the step computes on)
    num_workers: int | None = None
    # AdamW's implementation; auto = fused on CUDA with fp32/bf16 parameters, else foreach
    optimizer_impl: Literal["auto", "fused", "foreach", "for_loop"] = "auto"
    save_every: int = 0  # steps between checkpoints; 0 = only at the end
    keep_last: int = 2
    resume: str | None = None  # null | auto | a checkpoint directory
    # what a resumed run may change; only [max_steps] (the lr schedule is then recomputed for the
    # new total from the resumed step on)
    resume_allow_changes: list[str] = field(default_factory=list)
    log_every: int = 1
    tensorboard: bool = True
    wandb: bool = False
    wandb_project: str = "cgmed"
    wandb_mode: Literal["offline", "online", "disabled"] = "offline"
    # auto = a bar on a terminal, a plain log line every 10% under SLURM/CI or when stderr is not a
    # terminal; true = always the bar; false = nothing (cgmed-cg's evaluations follow it too)
    progress_bar: bool | Literal["auto"] = "auto"
    deterministic: bool = True
    eval_every: int = (
        0  # score eval manifests every N steps (needs eval manifests; see cgmed-cg cg.curve_every)
    )

    def __post_init__(self) -> None:
        _check_sizes(self)
        _check_optimizer(self)
        if self.save_every < 0:
            raise ConfigError("train.save_every", "must be >= 0 (0 = only at the end)")
        unknown = sorted(set(self.resume_allow_changes) - set(RESUME_CHANGES))
        if unknown:
            raise ConfigError(
                "train.resume_allow_changes",
                f"{unknown} cannot change on resume",
                f"list only {list(RESUME_CHANGES)} (a resumed run is otherwise the same run)",
            )
        if len(self.frozen_parts()) == len(PARTS):
            key = "train.freeze_language" if self.freeze_language else "train.lr"
            raise ConfigError(
                key,
                "every part is frozen (by a freeze switch or a learning rate of 0): nothing would train",
                "unfreeze at least one part",
            )

    def part_lr(self, part: str) -> float:
        """The learning rate of ``part`` (vision, projector, language): its own, else ``train.lr``."""
        own = getattr(self, f"lr_{part}")
        return self.lr if own is None else own

    def frozen_parts(self) -> set[str]:
        """Parts that do not train: frozen by their switch, or given a learning rate of 0."""
        return {p for p in PARTS if getattr(self, f"freeze_{p}") or self.part_lr(p) == 0}

    def effective_batch(self, world: int) -> dict[str, int]:
        """The batch of one optimizer step with ``world`` processes, as a run records it."""
        return {
            "global_batch_size": self.per_device_batch_size * self.grad_accum * world,
            "per_device_batch_size": self.per_device_batch_size,
            "grad_accum": self.grad_accum,
            "world_size": world,
        }


RESUME_CHANGES = ("max_steps",)
OPTIMIZER_IMPLS = ("auto", "fused", "foreach", "for_loop")


def _check_sizes(cfg: TrainConfig) -> None:
    """Batch sizes, lengths, counts and the step budget."""
    positive = ("per_device_batch_size", "grad_accum", "max_length", "keep_last", "log_every")
    for key in positive:
        if getattr(cfg, key) < 1:
            raise ConfigError(f"train.{key}", f"must be >= 1, got {getattr(cfg, key)}")
    if cfg.global_batch_size is not None and cfg.global_batch_size < 1:
        raise ConfigError("train.global_batch_size", f"must be >= 1 or null, got {cfg.global_batch_size}")
    if cfg.num_workers is not None and cfg.num_workers < 0:
        raise ConfigError("train.num_workers", f"must be >= 0 or null, got {cfg.num_workers}")
    for key in ("max_bad_images", "eval_every"):
        if getattr(cfg, key) < 0:
            raise ConfigError(f"train.{key}", f"must be >= 0, got {getattr(cfg, key)}")
    if cfg.max_steps == 0 or cfg.max_steps < -1:
        raise ConfigError("train.max_steps", f"must be >= 1 or -1 (use train.epochs), got {cfg.max_steps}")
    if cfg.max_steps == -1 and cfg.epochs <= 0:
        raise ConfigError("train.epochs", "must be > 0 when train.max_steps=-1")


def _check_optimizer(cfg: TrainConfig) -> None:
    """Learning rates, schedule, AdamW and clipping: values that the optimizer would take silently."""
    for key in ("lr", "lr_vision", "lr_projector", "lr_language", "weight_decay"):
        value = getattr(cfg, key)
        if value is not None and value < 0:
            raise ConfigError(
                f"train.{key}",
                f"must be >= 0, got {value}",
                "use 0 to freeze a part, a positive value to train it",
            )
    for key in ("adam_beta1", "adam_beta2"):
        if not 0.0 <= getattr(cfg, key) < 1.0:
            raise ConfigError(
                f"train.{key}",
                f"must be in [0, 1), got {getattr(cfg, key)}",
                "AdamW's default is 0.9 / 0.999",
            )
    if cfg.adam_eps <= 0:
        raise ConfigError("train.adam_eps", f"must be > 0, got {cfg.adam_eps}")
    if cfg.max_grad_norm is not None and cfg.max_grad_norm <= 0:
        raise ConfigError(
            "train.max_grad_norm",
            f"must be > 0 or null, got {cfg.max_grad_norm} (a negative norm would flip the gradient's sign)",
            "use a positive norm such as 1.0, or train.max_grad_norm=null to turn clipping off",
        )
    if not 0.0 <= cfg.warmup_ratio < 1.0:
        raise ConfigError("train.warmup_ratio", f"must be in [0, 1), got {cfg.warmup_ratio}")
    if cfg.warmup_steps is not None and cfg.warmup_steps < 0:
        raise ConfigError("train.warmup_steps", f"must be >= 0 or null, got {cfg.warmup_steps}")
    if cfg.optimizer_impl not in OPTIMIZER_IMPLS:
        raise ConfigError(
            "train.optimizer_impl",
            f"{cfg.optimizer_impl!r} is not one of {list(OPTIMIZER_IMPLS)}",
            "use auto (fused on CUDA, foreach elsewhere)",
        )
    if not 0.0 <= cfg.min_lr_ratio <= 1.0:
        raise ConfigError("train.min_lr_ratio", f"must be in [0, 1], got {cfg.min_lr_ratio}")


def resolve_global_batch(cfg: TrainConfig, world: int) -> TrainConfig:
    """``cfg`` with ``grad_accum`` derived from ``train.global_batch_size`` for ``world`` processes.

    Unchanged when ``global_batch_size`` is null. A global batch that per-device batch x processes
    does not divide is a ConfigError; so is an explicit ``grad_accum`` (other than 1) that disagrees.
    """
    wanted = cfg.global_batch_size
    if wanted is None:
        return cfg
    per_micro_step = cfg.per_device_batch_size * world
    accum, rest = divmod(wanted, per_micro_step)
    if rest or accum < 1:
        fits = [p for p in range(1, cfg.per_device_batch_size + 1) if wanted % (p * world) == 0]
        fix = f"set train.global_batch_size to a multiple of {per_micro_step}" + (
            f", or train.per_device_batch_size to one of {fits}"
            if fits
            else f"; no per-device batch splits {wanted} over {world} processes: start a process count that divides it"
        )
        raise ConfigError(
            "train.global_batch_size",
            f"{wanted} is not train.per_device_batch_size {cfg.per_device_batch_size} x {world} "
            f"process(es) x a whole train.grad_accum (it is not a multiple of {per_micro_step})",
            fix,
        )
    if cfg.grad_accum not in (1, accum):
        raise ConfigError(
            "train.grad_accum",
            f"is {cfg.grad_accum}, but train.global_batch_size={wanted} with per_device_batch_size "
            f"{cfg.per_device_batch_size} x {world} process(es) needs {accum}",
            "leave train.grad_accum at 1 (it is derived from train.global_batch_size) or set "
            "train.global_batch_size=null",
        )
    return dataclasses.replace(cfg, grad_accum=accum)


@dataclass
class DistributedConfig:
    """``distributed``: knobs for runs started with torchrun (``accelerate launch`` sets its own).

    ``deepspeed_config`` points at a DeepSpeed JSON (``deepspeed/zero2.json`` ... shipped in ``cgmed/conf/deepspeed/``, or a path of your own) so that
    ``torchrun -m cgmed.train distributed=deepspeed_zero2`` runs DeepSpeed without accelerate's
    launcher; under ``accelerate launch --config_file launch/accelerate/*.yaml`` leave it null.
    """

    backend: str | None = None  # null = nccl on GPUs, gloo on CPUs
    deepspeed_config: str | None = None
    fsdp: bool = False  # FSDP2 (torch fully_shard) through accelerate, for torchrun starts
    timeout_minutes: int = 30
    find_unused_parameters: bool = False


GROUPS = {"model": ModelConfig, "train": TrainConfig, "peft": PeftConfig, "distributed": DistributedConfig}
__all__ = [
    "GROUPS",
    "DistributedConfig",
    "ModelConfig",
    "PeftConfig",
    "TrainConfig",
    "resolve_global_batch",
]
