"""Config groups of ``cgmed-train``: ``model``, ``train``, ``peft`` and ``distributed``.

Each group is one dataclass; its defaults are the only defaults (``cgmed/conf/<group>/*.yaml``
files only state what differs). Cross-field rules live in ``__post_init__`` so a bad
combination fails at start-up with the key and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from cgmed.errors import ConfigError


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
    attn_implementation: str | None = None  # e.g. sdpa, flash_attention_2; null = the transformers default


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
    lr: float = 2e-5
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
    num_workers: int = 0
    save_every: int = 0  # steps between checkpoints; 0 = only at the end
    keep_last: int = 2
    resume: str | None = None  # null | auto | a checkpoint directory
    log_every: int = 1
    tensorboard: bool = True
    wandb: bool = False
    wandb_project: str = "cgmed"
    wandb_mode: Literal["offline", "online", "disabled"] = "offline"
    progress_bar: bool = True
    deterministic: bool = True
    eval_every: int = (
        0  # score eval manifests every N steps (needs eval manifests; see cgmed-cg cg.curve_every)
    )

    def __post_init__(self) -> None:
        positive = ("per_device_batch_size", "grad_accum", "max_length", "keep_last", "log_every")
        for key in positive:
            if getattr(self, key) < 1:
                raise ConfigError(f"train.{key}", f"must be >= 1, got {getattr(self, key)}")
        if self.max_steps == 0 or self.max_steps < -1:
            raise ConfigError(
                "train.max_steps", f"must be >= 1 or -1 (use train.epochs), got {self.max_steps}"
            )
        if self.max_steps == -1 and self.epochs <= 0:
            raise ConfigError("train.epochs", "must be > 0 when train.max_steps=-1")
        if self.lr <= 0:
            raise ConfigError("train.lr", f"must be > 0, got {self.lr}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError("train.warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio}")
        if self.save_every < 0:
            raise ConfigError("train.save_every", "must be >= 0 (0 = only at the end)")
        if self.freeze_vision and self.freeze_projector and self.freeze_language:
            raise ConfigError(
                "train.freeze_language",
                "every part is frozen: nothing would train",
                "unfreeze at least one part",
            )


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
__all__ = ["GROUPS", "DistributedConfig", "ModelConfig", "PeftConfig", "TrainConfig"]
